"""Task data → prompt/answer records → token ids with the prompt masked.

Sources: ``builtin:<task>`` generators, local ``.jsonl``/``.json``/``.parquet`` files, or a hub dataset id or a
local dataset folder laid out like one (``datasets.load_dataset``). One template renders the prompt for both
training and evaluation, so the model is tested on exactly the format it was trained on.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gridrun.builtin import builtin_name, task_generator
from gridrun.errors import GridrunError
from gridrun.examples import IGNORE_INDEX, collate, encode_example
from gridrun.spec import DataSpec
from trainables.rows import clean_rows

__all__ = [
    "FILE_SUFFIXES",
    "IGNORE_INDEX",
    "check_fields",
    "collate",
    "count_rows",
    "encode_example",
    "iter_rows",
    "load_eval_records",
    "load_records",
    "load_task_data",
    "read_rows",
    "render_prompt",
    "subsample",
]

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_file(path: Path, field: str) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise GridrunError(f"{field}: {path} line {i} is not valid JSON ({e.msg})") from None
            return rows
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise GridrunError(f"{field}: {path} must hold a list of records (or {{'data': [...]}})")
            return data
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except json.JSONDecodeError as e:
        raise GridrunError(f"{field}: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise GridrunError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    raise GridrunError(f"{field}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def load_records(
    source: str,
    *,
    field: str,
    split: str = "train",
    size: int = 512,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    subset: str | None = None,
    revision: str | None = None,
) -> list[dict[str, Any]]:
    """Raw records from a builtin generator, a local file, a hub dataset or a local folder in hub layout."""
    short = builtin_name(source)
    if short is not None:
        gen = task_generator(short, field)
        try:
            return gen(size, seed, split=split, **(options or {}))
        except TypeError as e:
            raise GridrunError(f"data.options: {e}") from None
        except ValueError as e:
            raise GridrunError(f"data.options: {e}") from None
    path = Path(source).expanduser()
    if path.is_file() or (path.suffix in FILE_SUFFIXES and not path.is_dir()):
        if not path.is_file():
            raise GridrunError(f"{field}: data file not found: {path}")
        return _read_file(path, field)
    # A hub id, or a local dataset folder laid out like one (a snapshot downloaded for an offline cluster):
    # datasets reads both, and finds the splits from the file names (train*, test*, validation*).
    return list(_open_dataset(source, field=field, subset=subset, split=split, revision=revision))


def _open_dataset(
    source: str, *, field: str, subset: str | None, split: str, revision: str | None, streaming: bool = False
) -> Any:
    """``datasets.load_dataset`` on a hub id or a local folder in hub layout (its subset is a sub-folder)."""
    path = Path(source).expanduser()
    try:
        import datasets

        datasets.disable_progress_bars()  # "Generating train split" bars in every trial's log
        if path.is_dir():
            data_dir = subset if subset and (path / subset).is_dir() else None
            if subset and data_dir is None:
                raise GridrunError(f"{field}: {path} has no sub-folder for subset {subset!r}")
            return datasets.load_dataset(str(path), data_dir=data_dir, split=split, streaming=streaming)
        return datasets.load_dataset(source, subset, split=split, revision=revision, streaming=streaming)
    except GridrunError:
        raise
    except Exception as e:  # hub unreachable, unknown id, bad split: all user-facing
        raise GridrunError(
            f"{field}: cannot load dataset {source!r} (split {split!r}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def iter_rows(
    source: str, *, field: str, subset: str | None, split: str, revision: str | None
) -> Iterator[dict[str, Any]]:
    """Records of a file, or of a split of a hub dataset or local folder in hub layout, in order; datasets are
    streamed, so a reader that stops early never downloads more than it read."""
    path = Path(source).expanduser()
    if path.is_file():
        yield from _read_file(path, field)
        return
    if not path.exists() and (path.suffix in FILE_SUFFIXES or source.startswith((".", "/", "~"))):
        raise GridrunError(f"{field}: file not found: {path}")
    ds = _open_dataset(source, field=field, subset=subset, split=split, revision=revision, streaming=True)
    rows = iter(ds)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a stream can fail on a read, not only on open
            raise GridrunError(f"{field}: cannot read dataset {source!r}: {type(e).__name__}: {e}") from None
        yield row


def read_rows(
    source: str, *, field: str, subset: str | None, split: str, revision: str | None, limit: int
) -> list[dict[str, Any]]:
    """The first ``limit`` records of ``iter_rows``."""
    rows = iter_rows(source, field=field, subset=subset, split=split, revision=revision)
    return list(itertools.islice(rows, limit))


def check_fields(rows: list[dict[str, Any]], fields: tuple[str, ...], source: str, field: str) -> None:
    if not rows:
        raise GridrunError(f"{field}: {source} holds no records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise GridrunError(f"{field}: record {i} of {source} is a {type(row).__name__}, not an object")
        for f in fields:
            if f not in row:
                raise GridrunError(f"{field}: record {i} of {source} has no field '{f}' (fields: {', '.join(row)})")
            if not isinstance(row[f], str):
                raise GridrunError(
                    f"{field}: record {i} of {source}: field '{f}' must be text, got {type(row[f]).__name__}"
                )


def count_rows(data: DataSpec) -> int | None:
    """How many records ``data.task`` holds, read without holding them as Python objects: Parquet's metadata, a
    JSONL file's lines, a hub dataset's (or hub-layout folder's) Arrow table; None where only reading the records
    tells (a builtin generator, a JSON file, SQuAD's nested v1.1 file)."""
    if builtin_name(data.task):
        return None
    path = Path(data.task).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if path.suffix == ".jsonl":
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        return None
    ds = _open_dataset(data.task, field="data.task", subset=data.subset, split=data.split, revision=data.revision)
    return int(ds.num_rows)


def load_task_data(data: DataSpec, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and eval records with ``prompt``/``answer`` keys (plus whatever metadata the source carries).

    A file or hub source without a separate ``data.eval`` is split: the last ``eval_size`` records become the
    evaluation set, never trained on.
    """
    opts = data.options
    train = load_records(
        data.task,
        field="data.task",
        split="train" if builtin_name(data.task) else data.split,
        size=data.train_size,
        seed=seed,
        options=opts,
        subset=data.subset,
        revision=data.revision,
    )
    if data.adapter == "squad" and not builtin_name(data.task):
        train = squad_records(train, "data.task", **_squad_opts(opts))
    if not train:
        raise GridrunError(f"data.task: {data.task} holds no records")
    # malformed rows are skipped (and fail past data.max_bad_fraction) as in a trial's training split
    train = clean_rows(train, data)
    if data.eval or builtin_name(data.task):
        ev = load_eval_records(data, seed)
    else:
        if len(train) < 2:
            raise GridrunError(
                f"data.task: {data.task} has {len(train)} record; need at least 2 to hold "
                "some out for evaluation (or set data.eval)"
            )
        k = min(data.eval_size, len(train) // 5 or 1)
        train, ev = train[:-k], train[-k:]
    return train, ev[: data.eval_size]


def load_eval_records(data: DataSpec, seed: int) -> list[dict[str, Any]]:
    """Eval records with ``prompt``/``answer`` keys from ``data.eval`` or a builtin task's eval split.

    (A source without either gives its held-out tail: ``load_task_data`` here, ``trainables.tokenized`` in trials.)
    """
    pf, af, mf, opts = data.prompt_field, data.answer_field, data.messages_field, data.options
    squad = data.adapter == "squad" and not builtin_name(data.task)
    if squad:
        pf, af = "prompt", "answer"
    if data.eval:
        ev_raw = load_records(
            data.eval,
            field="data.eval",
            split="eval" if builtin_name(data.eval) else data.eval_split,
            size=data.eval_size,
            seed=seed,
            options=opts,
            subset=data.subset,
            revision=data.revision,
        )
        ev = (
            # eval_size counts questions in both prompt formats: the same questions, whichever the trial uses
            squad_records(ev_raw, "data.eval", **_squad_opts(opts), questions=data.eval_size)
            if squad and not builtin_name(data.eval)
            else ev_raw
        )
        if mf:
            ev = _from_messages(ev, mf, data.eval, "data.eval")
        else:
            check_fields(ev, (pf, af), data.eval, "data.eval")
    elif builtin_name(data.task):
        ev = load_records(data.task, field="data.task", split="eval", size=data.eval_size, seed=seed, options=opts)
        if mf:
            ev = _from_messages(ev, mf, data.task, "data.task")
    else:
        raise GridrunError("data.eval: not set, and data.task is not a builtin task with its own eval split")
    if mf:
        return ev[: data.eval_size]
    return [{**r, "prompt": r[pf], "answer": r[af]} for r in ev[: data.eval_size]]


def _from_messages(rows: list[dict[str, Any]], field: str, source: str, where: str) -> list[dict[str, Any]]:
    """Chat records → prompt (the turns before the last assistant turn) and answer (that turn's content)."""
    if not rows:
        raise GridrunError(f"{where}: {source} holds no records")
    out = []
    for i, row in enumerate(rows):
        msgs = row.get(field) if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise GridrunError(f"{where}: record {i} of {source} has no '{field}' list of messages")
        for m in msgs:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise GridrunError(f"{where}: record {i} of {source}: every message needs role and content text")
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise GridrunError(f"{where}: record {i} of {source} must end with an assistant message after a prompt")
        out.append({**row, "prompt": msgs[:-1], "answer": msgs[-1]["content"]})
    return out


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]], template: str) -> str:
    """The text the model sees before its answer; the only place a prompt is formatted.

    ``prompt`` is a string, or (chat records) the list of messages before the answer.
    """
    if isinstance(prompt, list):
        if template != "chat":
            raise GridrunError("data.template: chat records (data.messages_field) need template: chat")
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise GridrunError(
                "data.template: 'chat' needs a tokenizer with a chat template; give a format "
                "string with {prompt} instead"
            )
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return template.format(prompt=prompt)


def subsample(n: int, ratio: float, seed: int) -> list[int]:
    """A seeded subset of ``round(n * ratio)`` indices (at least one), in their original order."""
    if not 0 < ratio <= 1:
        raise GridrunError(f"data.sample_ratio: must be in (0, 1], got {ratio}")
    k = max(1, round(n * ratio))
    if k >= n:
        return list(range(n))
    return sorted(random.Random(f"sample_ratio/{seed}").sample(range(n), k))


def _squad_opts(opts: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_format": opts.get("prompt_format", "batch"),
        "questions_per_context": int(opts.get("questions_per_context", 5)),
    }


def squad_records(
    rows: list[dict[str, Any]],
    where: str,
    prompt_format: str = "batch",
    questions_per_context: int = 5,
    questions: int | None = None,
) -> list[dict[str, Any]]:
    """SQuAD rows → QA examples in the squad evaluator's shape (``answers``, ``format``, ``context_id``).

    Accepts the hub layout (``context``, ``question``, ``answers: {text: [...]}``) and the v1.1 JSON file layout
    (articles with ``paragraphs`` → ``qas``). ``sequential`` puts up to ``questions_per_context`` questions of one
    context into one example answered as numbered lines; ``batch`` makes one example per question. ``questions``
    keeps the first that many questions (in the source's order) before either format groups them, so both
    formats hold the same questions.
    """
    if prompt_format not in ("batch", "sequential"):
        raise GridrunError(f"data.options.prompt_format: 'batch' or 'sequential', got {prompt_format!r}")
    flat: list[tuple[str, str, list[str]]] = []
    for row in rows:
        if "paragraphs" in row:  # v1.1 JSON: article → paragraphs → qas
            for para in row["paragraphs"]:
                for qa in para.get("qas", []):
                    flat.append((para["context"], qa["question"], [a["text"] for a in qa.get("answers", [])]))
        elif {"context", "question", "answers"} <= set(row):
            ans = row["answers"]
            texts = (
                ans.get("text", []) if isinstance(ans, dict) else [a["text"] if isinstance(a, dict) else a for a in ans]
            )
            flat.append((row["context"], row["question"], list(texts)))
        else:
            raise GridrunError(
                f"{where}: data.adapter squad needs context/question/answers (or v1.1 paragraphs) "
                f"records; got fields {', '.join(row)}"
            )
    if not flat:
        raise GridrunError(f"{where}: no SQuAD questions found")
    flat = flat[:questions] if questions is not None else flat
    by_ctx: dict[str, list[tuple[str, list[str]]]] = {}
    for ctx, q, golds in flat:
        by_ctx.setdefault(ctx, []).append((q, golds or [""]))
    out: list[dict[str, Any]] = []
    for cid, (ctx, qas) in enumerate(by_ctx.items()):
        if prompt_format == "batch":
            for q, golds in qas:
                out.append(
                    {
                        "prompt": f"Context: {ctx}\nQuestion: {q}\nAnswer with a span of the context.",
                        "answer": golds[0],
                        "answers": [golds],
                        "format": "batch",
                        "context_id": cid,
                    }
                )
        else:
            for k in range(0, len(qas), questions_per_context):
                part = qas[k : k + questions_per_context]
                numbered = "\n".join(f"{i + 1}. {q}" for i, (q, _) in enumerate(part))
                out.append(
                    {
                        "prompt": f"Context: {ctx}\nQuestions:\n{numbered}\nAnswer each on its own numbered line.",
                        "answer": "\n".join(f"{i + 1}. {g[0]}" for i, (_, g) in enumerate(part)),
                        "answers": [g for _, g in part],
                        "format": "sequential",
                        "context_id": cid,
                    }
                )
    return out
