"""General-ability data for the forgetting measures: the probe text and the multiple-choice benchmarks.

The probe is held-out general text (a builtin probe, a file, or the first documents of a hub dataset split,
streamed), packed into fixed-length blocks whose loss is compared with the base model's.

The benchmarks are read from their hub columns as lm-evaluation-harness reads them.

Each benchmark turns one hub row into an item of log-likelihood requests, ``contexts[i] + continuations[i]`` per
choice, with the gold index and each choice's text length (what ``acc_norm`` divides by). The prompts, choices
and delimiters are lm-evaluation-harness's task definitions (HellaSwag's bracket clean-up, ARC's
``Question: …\\nAnswer:``, WinoGrande's partial scoring, a single space as target delimiter), so the accuracies
are comparable with published numbers; ``tests/evaluators_tests/test_mc_reference.py`` checks them against
lm-evaluation-harness itself on the same items.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gridrun.builtin import builtin_name, mc_source, probe_source
from gridrun.errors import GridrunError
from gridrun.spec import ForgettingSpec, McSpec
from trainables.data import FILE_SUFFIXES, check_fields, iter_rows, read_rows

__all__ = [
    "BENCHMARKS",
    "PROBE_CHARS",
    "Benchmark",
    "McSet",
    "load_mc_sets",
    "load_probe_texts",
    "load_questions",
    "mc_source_of",
    "probe_blocks",
    "probe_rows",
]

#: One item: a request per choice, the gold choice, and each choice's length in characters (for acc_norm).
Item = dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the hub, which split and metric lm-evaluation-harness reports, how a row reads."""

    hub_id: str | None
    subset: str | None
    split: str
    metric: Literal["acc", "acc_norm"]
    to_item: Callable[[dict[str, Any]], Item]


@dataclass
class McSet:
    """A loaded benchmark: its items and the metric reported for it."""

    name: str
    metric: Literal["acc", "acc_norm"]
    items: list[Item]


def _choice_item(context: str, choices: list[str], answer: int) -> Item:
    return {
        "contexts": [context] * len(choices),
        "continuations": [" " + c for c in choices],
        "lengths": [len(c) for c in choices],
        "answer": answer,
    }


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")  # brackets are WikiHow artifacts
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(row: dict[str, Any]) -> Item:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = _hellaswag_clean(row["activity_label"] + ": " + ctx)
    return _choice_item(query, [_hellaswag_clean(e) for e in row["endings"]], int(row["label"]))


def _arc(row: dict[str, Any]) -> Item:
    labels = list(row["choices"]["label"])
    question = f"Question: {row['question']}\nAnswer:"
    return _choice_item(question, list(row["choices"]["text"]), labels.index(row["answerKey"]))


def _winogrande(row: dict[str, Any]) -> Item:
    """Partial scoring: each option fills the blank in the context; the same rest of the sentence is scored."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + row[k] for k in ("option1", "option2")]
    rest = sentence[blank + 1 :].strip()
    return {
        "contexts": contexts,
        "continuations": [" " + rest] * 2,
        "lengths": [len(c) for c in contexts],
        "answer": {"1": 0, "2": 1}[str(row["answer"])],
    }


def _custom(row: dict[str, Any]) -> Item:
    return _choice_item(row["question"], [str(c).strip() for c in row["choices"]], int(row["answer"]))


BENCHMARKS: dict[str, Benchmark] = {
    "hellaswag": Benchmark("Rowan/hellaswag", None, "validation", "acc_norm", _hellaswag),
    "arc_challenge": Benchmark("allenai/ai2_arc", "ARC-Challenge", "test", "acc_norm", _arc),
    "arc_easy": Benchmark("allenai/ai2_arc", "ARC-Easy", "test", "acc_norm", _arc),
    "winogrande": Benchmark("allenai/winogrande", "winogrande_xl", "validation", "acc", _winogrande),
    "custom": Benchmark(None, None, "test", "acc_norm", _custom),
}


def mc_source_of(mc: McSpec) -> tuple[str, str | None, str]:
    """(source, subset, split) a benchmark entry reads, with the benchmark's defaults filled in."""
    bench = BENCHMARKS[mc.benchmark]
    source = mc.source or bench.hub_id
    assert source is not None, "a custom set has a source (checked by the schema)"
    if mc.subset is not None:
        subset: str | None = mc.subset
    elif mc.source in (None, bench.hub_id):
        subset = bench.subset
    elif bench.subset and (Path(source).expanduser() / bench.subset).is_dir():
        subset = bench.subset  # a snapshot of the benchmark's repo: read its subset, not every subset merged
    else:
        subset = None
    return source, subset, mc.split or bench.split


def _custom_ok(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("question"), str)
        and isinstance(row.get("choices"), list)
        and len(row["choices"]) >= 2
        and isinstance(row.get("answer"), int)
        and 0 <= row["answer"] < len(row["choices"])
    )


def load_mc_sets(mcs: list[McSpec]) -> list[McSet]:
    """Each benchmark's first ``limit`` items of its split, as log-likelihood requests."""
    out = []
    for mc in mcs:
        bench = BENCHMARKS[mc.benchmark]
        source, subset, split = mc_source_of(mc)
        where = f"forgetting.mc ({mc.benchmark})"
        short = builtin_name(source)
        if short is not None:
            rows = mc_source(short)()[: mc.limit]
        else:
            rows = read_rows(source, field=where, subset=subset, split=split, revision=mc.revision, limit=mc.limit)
        if not rows:
            raise GridrunError(f"{where}: {source} holds no items")
        items = []
        for i, row in enumerate(rows):
            if mc.benchmark == "custom" and not _custom_ok(row):
                raise GridrunError(f"{where}: item {i} of {source} needs question (text), choices (2+), answer (index)")
            try:
                items.append(bench.to_item(row))
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise GridrunError(
                    f"{where}: row {i} of {source} does not have {mc.benchmark}'s hub columns ({type(e).__name__}: {e})"
                ) from None
        out.append(McSet(mc.benchmark, bench.metric, items))
    return out


#: Characters of general text the probe reads from a dataset: well over what ``samples x seq_len`` tokens need at
#: the probe sizes used (64 x 512 tokens is ~150k characters of English).
PROBE_CHARS = 400_000


def probe_rows(fg: ForgettingSpec, chars: int = PROBE_CHARS) -> list[dict[str, Any]]:
    """The records the probe reads from a dataset or data file: the first ones of the split, in order, until
    about ``chars`` characters of non-empty text (what ``gridrun prepare`` saves for an offline cluster)."""
    rows, total = [], 0
    for row in iter_rows(
        fg.probe, field="forgetting.probe", subset=fg.probe_subset, split=fg.probe_split, revision=fg.probe_revision
    ):
        check_fields([row], (fg.probe_field,), fg.probe, "forgetting.probe")
        rows.append(row)
        total += len(row[fg.probe_field].strip())
        if total >= chars:
            break
    return rows


def load_probe_texts(fg: ForgettingSpec, chars: int = PROBE_CHARS) -> list[str]:
    """General text for the forgetting probe, in a fixed order: a builtin probe, a text file (paragraphs), a
    JSON/JSONL/Parquet file, or the first documents of a hub dataset split (streamed until about ``chars``
    characters are read, so a probe never downloads gigabytes)."""
    short = builtin_name(fg.probe)
    if short is not None:
        return probe_source(short)()
    path = Path(fg.probe).expanduser()
    if path.is_file() and path.suffix not in FILE_SUFFIXES:
        texts = [t for t in path.read_text().split("\n\n") if t.strip()]
        if not texts:
            raise GridrunError(f"forgetting.probe: {path} holds no text")
        return texts
    texts = [r[fg.probe_field] for r in probe_rows(fg, chars) if r[fg.probe_field].strip()]
    if not texts:
        raise GridrunError(f"forgetting.probe: {fg.probe} holds no text in field {fg.probe_field!r}")
    return texts


def probe_blocks(tokenizer: Any, texts: list[str], seq_len: int, samples: int) -> list[list[int]]:
    """Pack probe documents (EOS-separated) into ``samples`` blocks of ``seq_len`` tokens."""
    sep = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep)
        if len(ids) >= seq_len * samples:
            break
    blocks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:samples]
    if not blocks:
        raise GridrunError(f"forgetting.probe: text too short for one block of {seq_len} tokens")
    return blocks


def load_questions(judge: Any) -> list[str]:
    """The first ``limit`` questions of the judge measure's source (``JudgeOptions``), in order; a list of turns
    (MT-Bench's ``prompt``) asks its first turn."""
    where = "forgetting.judge.questions"
    rows = read_rows(
        judge.questions, field=where, subset=None, split=judge.split, revision=judge.revision, limit=judge.limit
    )
    out = []
    for i, row in enumerate(rows):
        q = row.get(judge.question_field) if isinstance(row, dict) else None
        if isinstance(q, list | tuple) and q:
            q = q[0]
        if not isinstance(q, str) or not q.strip():
            raise GridrunError(f"{where}: record {i} of {judge.questions} has no question in {judge.question_field!r}")
        out.append(q)
    if not out:
        raise GridrunError(f"{where}: {judge.questions} holds no questions")
    return out
