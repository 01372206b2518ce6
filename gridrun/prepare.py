"""``gridrun prepare``: fetch everything a spec reads into one folder, and write the spec that reads it there.

For an offline cluster (or a reproducible record): the model snapshot at its revision, every dataset split and
subset the task uses, the probe's documents and each benchmark's items, pinned to the hub commit they were read
at. Datasets are written as Parquet in hub layout (``<dir>/datasets/<name>/[<subset>/]<split>-00000-of-00001.parquet``),
read back by the same loader as any local dataset folder; ``<dir>/<name>.yaml`` is the spec with its sources
replaced by those folders, and ``<dir>/gridrun_prepare.json`` records what came from where, at which commit.
Builtin sources stay builtin; local model folders and data files are referenced where they are.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from gridrun.builtin import builtin_name
from gridrun.errors import GridrunError
from gridrun.sources import Source, hub_offline, input_sources, is_hub_id
from gridrun.spec import MC_BENCHMARKS, ExperimentSpec, apply_overrides, load_spec, set_path

__all__ = ["prepare"]

MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", name.strip("/"))


def _resolve(src: Source) -> str | None:
    """The commit a hub source resolves to at its revision (None for local sources)."""
    if not is_hub_id(src.source):
        return None
    from huggingface_hub import HfApi

    where = f"{src.field}: {src.kind} {src.source!r}"
    if hub_offline():
        raise GridrunError(f"prepare: could not fetch {where}: the hub is switched off here (HF_HUB_OFFLINE=1)")
    try:
        api = HfApi()
        info = (api.model_info if src.kind == "model" else api.dataset_info)(src.source, revision=src.revision)
    except Exception as e:
        raise GridrunError(f"prepare: could not fetch {where}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return str(info.sha)


def _fetch_model(src: Source, out: Path, sha: str) -> Path:
    from huggingface_hub import snapshot_download

    dest = out / "models" / _safe(src.source)
    try:
        snapshot_download(src.source, revision=sha, local_dir=str(dest), allow_patterns=MODEL_FILES)
    except Exception as e:
        raise GridrunError(
            f"prepare: could not fetch {src.field}: model {src.source!r}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    return dest


def _write_split(rows: list[dict[str, Any]], folder: Path, split: str, where: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise GridrunError(f"prepare: {where}: split {split!r} holds no records")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")


def _fetch_dataset(spec: ExperimentSpec, src: Source, out: Path, sha: str | None) -> Path:
    """Read the splits ``src`` uses (all rows, or the rows the probe / a benchmark reads) and write them."""
    from forgetting.data import probe_rows
    from trainables.data import iter_rows

    dest = out / "datasets" / _safe(src.source + (f"__{src.subset}" if src.subset else ""))
    revision = sha or src.revision
    for split in src.splits:
        if src.field == "forgetting.probe":
            fg = spec.forgetting.model_copy(update={"probe_revision": revision})
            rows = probe_rows(fg)
        else:
            it = iter_rows(src.source, field=src.field, subset=src.subset, split=split, revision=revision)
            rows = [r for _, r in zip(range(src.limit), it, strict=False)] if src.limit else list(it)
        _write_split(rows, dest, split, f"{src.field} {src.source!r}")
    return dest


def prepare(spec_file: str | Path, out: str | Path, overrides: list[str] | None = None, quiet: bool = False) -> Path:
    """Fetch every hub model and dataset ``spec_file`` reads into ``out``; returns the prepared spec's path.

    Raises:
        GridrunError: one line naming the source that could not be fetched (offline, missing id or revision).
    """
    from gridrun.spec.load import _yaml
    from gridrun.validate import check_spec

    spec = load_spec(spec_file, overrides)
    check_spec(spec)  # a spec that cannot run is not worth fetching gigabytes for
    dest = Path(out).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    raw = apply_overrides(_yaml(Path(spec_file).read_text()), overrides or [])
    manifest: dict[str, Any] = {
        "spec": str(Path(spec_file).resolve()),
        "prepared_at": time.strftime("%F %T"),
        "sources": [],
    }
    done: dict[tuple[str, str | None, str | None], tuple[Path, str | None]] = {}
    for src in input_sources(spec):
        if builtin_name(src.source) is not None or (src.kind == "model" and not is_hub_id(src.source)):
            continue
        if Path(src.source).expanduser().is_file():
            continue  # a local data file is read where it is
        key = (src.source, src.subset, src.field if src.field == "forgetting.probe" else None)
        if key not in done:
            sha = _resolve(src)
            say = (lambda msg: None) if quiet else (lambda msg: print(f"[gridrun] {msg}", flush=True))
            say(
                f"fetching {src.field}: {src.source}"
                + (f" ({src.subset})" if src.subset else "")
                + (f" @ {sha[:10]}" if sha else "")
            )
            path = _fetch_model(src, dest, sha) if src.kind == "model" and sha else _fetch_dataset(spec, src, dest, sha)
            done[key] = (path, sha)
            manifest["sources"].append(
                {
                    "field": src.field,
                    "source": src.source,
                    "subset": src.subset,
                    "revision": src.revision,
                    "commit": sha,
                    "path": str(path),
                }
            )
        _point_at(raw, src, done[key][0])
    raw.setdefault("name", spec.name)
    target = dest / f"{spec.name}.yaml"
    header = (
        f"# gridrun launch {target}\n"
        f"# prepared by `gridrun prepare {spec_file}` on {manifest['prepared_at']}: every hub source fetched into\n"
        f"# {dest} (commits in gridrun_prepare.json); runs offline (HF_HUB_OFFLINE=1).\n"
    )
    target.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    (dest / "gridrun_prepare.json").write_text(json.dumps(manifest, indent=2))
    return target


def _point_at(raw: dict[str, Any], src: Source, path: Path) -> None:
    """Make the raw spec read ``src`` from ``path`` (a snapshot folder: no revision, no subset)."""
    if src.field == "model.name":
        set_path(raw, "model.name", str(path))
        set_path(raw, "model.revision", None)
    elif src.field in ("data.task", "data.eval"):
        data = raw.get("data") or {}
        if src.field == "data.task" and data.get("eval") == src.source:  # eval read from the same dataset
            set_path(raw, "data.eval", str(path))
        set_path(raw, src.field, str(path))
        set_path(raw, "data.subset", None)
        set_path(raw, "data.revision", None)
    elif src.field == "forgetting.probe":
        for key, value in (("probe", str(path)), ("probe_subset", None), ("probe_revision", None)):
            set_path(raw, f"forgetting.{key}", value)
    else:  # forgetting.mc[i]
        i = int(src.field[len("forgetting.mc[") : -1])
        entries = raw.setdefault("forgetting", {}).get("mc")
        entries = entries if isinstance(entries, list) else [entries]
        entry = entries[i]
        if isinstance(entry, str):
            entry = {"benchmark": entry} if entry in MC_BENCHMARKS else {"benchmark": "custom", "source": entry}
        entry = dict(entry)
        entry.update(source=str(path), subset=None, revision=None, split=src.splits[0])
        entries[i] = entry
        raw["forgetting"]["mc"] = entries
