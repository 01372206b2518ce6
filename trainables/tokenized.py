"""The training split as token ids in an Arrow dataset: built once per node, memory-mapped by every trial.

The result of tokenizing depends only on the tokenizer, the data source and its version, the fields, the template
and ``max_seq_len``; a hash of those names one folder under ``$GRIDRUN_CACHE/data``. The first trial that needs a
folder builds it under a file lock (``datasets.Dataset.map`` with ``num_proc``) while the others wait; then every
trial opens it with ``datasets.load_from_disk``, which memory-maps the Arrow files, so no trial holds the split as
Python objects and a later trial starts without reading the source again.

Rows are cleaned on the way. An example whose prompt plus answer (plus EOS) exceeds ``max_seq_len`` is dropped,
never cut: a cut answer loses its EOS and teaches the model not to stop (``data/dropped_too_long``). A malformed
row is skipped and counted (``data/bad_rows``, the first one named in a warning); the trial fails only when more
than ``data.max_bad_fraction`` of the rows are malformed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridrun.builtin import builtin_name
from gridrun.builtin.tiny_model import cache_root
from gridrun.errors import GridrunError
from gridrun.spec import DataSpec
from trainables.data import (
    IGNORE_INDEX,
    _open_dataset,
    _squad_opts,
    load_eval_records,
    load_records,
    render_prompt,
    squad_records,
)
from trainables.rows import BadRow, check_bad_rows, parse_record

__all__ = ["TrainSet", "cache_key", "eval_records", "examples", "load_train_set"]

log = logging.getLogger("gridrun")

#: Status of a source row after encoding.
KEPT, TOO_LONG, BAD = 0, 1, 2
#: Bumped when the build's output changes for the same inputs, so old folders are not reused.
FORMAT = 1


@dataclass
class TrainSet:
    """A built training split: the examples and what was left out on the way."""

    dataset: Any  # datasets.Dataset with input_ids, labels, length; memory-mapped from the cache folder
    rows: int  # source rows read for training (a held-out tail excluded)
    dropped_too_long: int
    bad_rows: int
    folder: Path

    def metrics(self) -> dict[str, float]:
        return {"data/dropped_too_long": float(self.dropped_too_long), "data/bad_rows": float(self.bad_rows)}


def _holds_out(data: DataSpec) -> bool:
    """A file or hub source without ``data.eval`` gives its last records to evaluation."""
    return not data.eval and builtin_name(data.task) is None


def _squad(data: DataSpec) -> bool:
    return data.adapter == "squad" and builtin_name(data.task) is None


# ------------------------------------------------------------------------------------------------ the key


def _tokenizer_id(tok: Any) -> dict[str, Any]:
    """What decides a tokenizer's ids: its name, and a hash of its full definition (vocab, merges, specials)."""
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return {
        "name": getattr(tok, "name_or_path", ""),
        "definition": hashlib.sha256(text.encode()).hexdigest(),
        "chat_template": getattr(tok, "chat_template", None),
        "eos": tok.eos_token_id,
    }


def _source_id(data: DataSpec, seed: int) -> dict[str, Any]:
    """What decides the source's rows: generator settings, a file's size and mtime, or a hub id and revision."""
    src = data.task
    if builtin_name(src):
        return {"builtin": src, "size": data.train_size, "seed": seed, "options": data.options}
    path = Path(src).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return {"files": stats, "subset": data.subset, "split": data.split}
    return {"hub": src, "subset": data.subset, "split": data.split, "revision": data.revision}


def cache_key(data: DataSpec, tok: Any, seed: int) -> str:
    """The hash naming the cache folder of ``data`` tokenized by ``tok``."""
    parts = {
        "format": FORMAT,
        "tokenizer": _tokenizer_id(tok),
        "source": _source_id(data, seed),
        "fields": [data.prompt_field, data.answer_field, data.messages_field, data.adapter],
        "squad": _squad_opts(data.options) if _squad(data) else None,
        "template": data.template,
        "max_seq_len": data.max_seq_len,
        "held_out": data.eval_size if _holds_out(data) else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------- the build


def _json_rows(records: list[Any]) -> Any:
    """Records of any shape as one text column: Arrow needs one schema, a generator's records need not share one."""
    import datasets

    return datasets.Dataset.from_dict({"_json": [json.dumps(r, default=str) for r in records]})


def _source_rows(data: DataSpec, seed: int, work: Path) -> Any:
    """The training source as an Arrow dataset, one row per record (JSON text where records vary in shape)."""
    import datasets

    src = data.task
    if builtin_name(src) or _squad(data):
        # generators and the SQuAD adapter (which groups rows by context) produce records in Python, once per build
        recs = load_records(
            src,
            field="data.task",
            split="train" if builtin_name(src) else data.split,
            size=data.train_size,
            seed=seed,
            options=data.options,
            subset=data.subset,
            revision=data.revision,
        )
        return _json_rows(squad_records(recs, "data.task", **_squad_opts(data.options)) if _squad(data) else recs)
    path = Path(src).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet") and not path.is_dir():
        if not path.is_file():
            raise GridrunError(f"data.task: data file not found: {path}")
        if path.suffix == ".jsonl":  # as text lines, so one bad line is one bad row, not a failed load
            ds = datasets.Dataset.from_text(str(path), cache_dir=str(work))
            ds = ds.rename_column("text", "_json")
            return ds.filter(lambda ts: [bool(t.strip()) for t in ts], input_columns="_json", batched=True)
        if path.suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path), cache_dir=str(work))
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GridrunError(f"data.task: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
        if not isinstance(records, list):
            raise GridrunError(f"data.task: {path} must hold a list of records (or {{'data': [...]}})")
        return _json_rows(records)
    return _open_dataset(src, field="data.task", subset=data.subset, split=data.split, revision=data.revision)


def _encode_rows(batch: dict[str, list[Any]], idx: list[int], tok: Any, data: DataSpec) -> dict[str, list[Any]]:
    """A batch of source rows → token ids with the prompt masked, and each row's status (kept, too long, bad)."""
    n = len(idx)
    status, reason = [KEPT] * n, [""] * n
    prompts, answers, at = [], [], []
    for i in range(n):
        try:
            rec = parse_record({k: v[i] for k, v in batch.items()}, data)
        except BadRow as e:
            status[i], reason[i] = BAD, " ".join(str(e).split())
            continue
        prompts.append(render_prompt(tok, rec["prompt"], data.template))
        answers.append(rec["answer"])
        at.append(i)
    ids: list[list[int]] = [[] for _ in range(n)]
    labels: list[list[int]] = [[] for _ in range(n)]
    if at:
        # Prompt and answer tokenized separately, so the mask boundary is exact and the prompt's tokens are what
        # generation sees at evaluation (as encode_example does).
        p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        a_ids = tok(answers, add_special_tokens=False)["input_ids"]
        for i, p, a in zip(at, p_ids, a_ids, strict=True):
            a = [*a, tok.eos_token_id]
            if len(p) + len(a) > data.max_seq_len:
                status[i] = TOO_LONG
                continue
            ids[i], labels[i] = p + a, [IGNORE_INDEX] * len(p) + a
    return {
        "input_ids": ids,
        "labels": labels,
        "length": [len(x) for x in ids],
        "status": status,
        "reason": reason,
    }


def _check_config(data: DataSpec, tok: Any) -> None:
    """Errors of the spec, not of a row: they stop the build before any work."""
    if tok.eos_token_id is None:
        raise GridrunError("model tokenizer has no EOS token; cannot teach the model to stop")
    if data.messages_field and data.template != "chat":
        raise GridrunError("data.template: chat records (data.messages_field) need template: chat")
    if data.template == "chat" and not getattr(tok, "chat_template", None):
        raise GridrunError(
            "data.template: 'chat' needs a tokenizer with a chat template; give a format string with {prompt} instead"
        )


def _hold_out(rows: Any, data: DataSpec) -> tuple[Any, list[Any] | None]:
    """(training rows, evaluation rows): a source without ``data.eval`` gives its last records to evaluation."""
    if not _holds_out(data):
        return rows, None
    n = len(rows)
    if n < 2:
        raise GridrunError(
            f"data.task: {data.task} has {n} record; need at least 2 to hold some out for evaluation (or set data.eval)"
        )
    k = min(data.eval_size, n // 5 or 1)
    return rows.select(range(n - k)), rows.select(range(n - k, n)).to_list()


def _build(data: DataSpec, tok: Any, seed: int, key: str, tmp: Path, num_proc: int | None) -> dict[str, Any]:
    """Tokenize the source into ``tmp/dataset`` and return the build's meta (counts, first bad row, held-out rows)."""
    import datasets
    import numpy as np

    t0 = time.perf_counter()
    work = tmp / "work"
    work.mkdir(parents=True)
    rows, held_out = _hold_out(_source_rows(data, seed, work), data)
    if len(rows) == 0:
        raise GridrunError(f"data.task: {data.task} holds no records")
    procs = num_proc if num_proc is not None else (1 if len(rows) < 20_000 else min(4, os.cpu_count() or 1))
    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "length": datasets.Value("int32"),
            "status": datasets.Value("int8"),
            "reason": datasets.Value("string"),
        }
    )
    enc = rows.map(
        _encode_rows,
        with_indices=True,
        batched=True,
        fn_kwargs={"tok": tok, "data": data},
        remove_columns=rows.column_names,
        features=features,
        num_proc=procs if procs > 1 else None,
        cache_file_name=str(work / "encoded.arrow"),
        new_fingerprint=key,  # the key already names every input; hashing the tokenizer again would cost seconds
        load_from_cache_file=False,
    )
    status = np.asarray(enc.data.column("status").to_numpy())
    kept = np.flatnonzero(status == KEPT)
    bad = np.flatnonzero(status == BAD)
    first_bad = None
    if len(bad):
        first_bad = {"row": int(bad[0]), "reason": enc[int(bad[0])]["reason"]}
    enc.select(kept).remove_columns(["status", "reason"]).save_to_disk(str(tmp / "dataset"))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "key": key,
        "source": data.task,
        "rows": len(rows),
        "examples": len(kept),
        "dropped_too_long": int((status == TOO_LONG).sum()),
        "bad_rows": len(bad),
        "first_bad": first_bad,
        "held_out": held_out,
        "build_s": round(time.perf_counter() - t0, 3),
    }


def _ensure_built(data: DataSpec, tok: Any, seed: int, num_proc: int | None) -> Path:
    """The cache folder of this (data, tokenizer), built here if no other process has built it."""
    from filelock import FileLock

    key = cache_key(data, tok, seed)
    root = cache_root() / "data"
    folder = root / key
    if (folder / "meta.json").is_file():  # written last: its presence means the folder is complete
        return folder
    _check_config(data, tok)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "meta.json").is_file():  # another trial built it while this one waited
            return folder
        import datasets

        datasets.disable_progress_bars()
        tmp = root / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted build's leftovers
        try:
            meta = _build(data, tok, seed, key, tmp, num_proc)
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with (root / "builds.log").open("a") as f:  # one line per build: how often the cache was (re)built
            f.write(f"{key} {os.getpid()} rows={meta['rows']} build_s={meta['build_s']} {data.task}\n")
    return folder


def _meta(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return meta


def load_train_set(data: DataSpec, tok: Any, seed: int, num_proc: int | None = None) -> TrainSet:
    """The tokenized training split of ``data``, memory-mapped from the node's cache (built on first use).

    Args:
        seed: the trial's seed (it picks a builtin generator's records).
        num_proc: processes for the one-time build; by default 1 for small sources, else up to 4.

    Raises:
        GridrunError: more than ``data.max_bad_fraction`` of the rows are malformed, or no example fits.
    """
    import datasets

    folder = _ensure_built(data, tok, seed, num_proc)
    meta = _meta(folder)
    rows, bad, long_ = meta["rows"], meta["bad_rows"], meta["dropped_too_long"]
    check_bad_rows(data, rows, bad, meta["first_bad"])
    if meta["examples"] == 0:
        raise GridrunError(
            f"data.task: no example of {data.task} fits data.max_seq_len {data.max_seq_len} "
            f"({long_} longer, {bad} malformed)"
        )
    ds = datasets.load_from_disk(str(folder / "dataset"))
    return TrainSet(ds, rows, long_, bad, folder)


def eval_records(data: DataSpec, tok: Any, seed: int) -> list[dict[str, Any]]:
    """Evaluation records: ``data.eval``'s, a builtin task's eval split, or the source's held-out tail (kept by the
    build, so a trial never reads the whole source for it). Malformed held-out rows are skipped like training's."""
    if not _holds_out(data):
        return load_eval_records(data, seed)
    folder = cache_root() / "data" / cache_key(data, tok, seed)
    if (folder / "meta.json").is_file():
        held_out = _meta(folder)["held_out"]
    else:  # no trial built it here (evaluate_adapter on another machine): read the tail, tokenize nothing
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gridrun-eval-") as work:
            held_out = _hold_out(_source_rows(data, seed, Path(work)), data)[1]
    out = []
    for row in held_out or []:
        try:
            out.append(parse_record(row, data))
        except BadRow:
            continue
    return out[: data.eval_size]


def examples(ds: Any, idx: list[int]) -> list[dict[str, list[int]]]:
    """Rows ``idx`` of a tokenized dataset as the collator's examples (one Arrow read for the batch)."""
    cols = ds[list(idx)]
    return [{"input_ids": a, "labels": b} for a, b in zip(cols["input_ids"], cols["labels"], strict=True)]
