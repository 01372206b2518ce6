"""``gridrun export``: a trial's adapter (or the base model with it merged in) as a plain folder."""

from __future__ import annotations

import json
import posixpath
import shutil
from pathlib import Path
from typing import Any

from gridrun import storage as store
from gridrun.errors import GridrunError
from gridrun.report import load_summary

__all__ = ["checkpoint_dir", "export", "pick_trial"]


def pick_trial(summary: dict[str, Any], trial: str | None) -> dict[str, Any]:
    """The summary row of ``trial`` (an id or its suffix), or of the best trial."""
    if trial is None:
        if not summary.get("best"):
            raise GridrunError("no trial finished with a finite objective; pass --trial to export one anyway")
        trial = summary["best"]["trial_id"]
    known = ", ".join(r["trial_id"] for r in summary["trials"])
    exact = [r for r in summary["trials"] if r["trial_id"] == trial]
    matches = exact or [r for r in summary["trials"] if r["trial_id"].endswith(str(trial))]
    if len(matches) > 1:
        raise GridrunError(f"--trial {trial}: matches {len(matches)} trials; give more of the id (known: {known})")
    if not matches:
        raise GridrunError(f"--trial {trial}: no such trial in this experiment; known: {known}")
    return matches[0]


def checkpoint_dir(row: dict[str, Any]) -> str:
    """The checkpoint holding a summary row's adapter (a local path or a URI): its best checkpoint (what MLflow
    holds), else its last."""
    ckpt = (row.get("best_checkpoint") or {}).get("path") or posixpath.dirname(row["adapter"] or "")
    adapter = store.join(ckpt, "adapter")
    try:
        found = bool(ckpt) and store.is_dir(adapter)
    except OSError as e:
        raise GridrunError(f"adapter of trial {row['trial_id']} at {adapter}: {store.one_line(e)}") from None
    if not found:
        raise GridrunError(f"adapter of trial {row['trial_id']} not found at {adapter} (checkpoint deleted?)")
    return ckpt


def export(experiment_dir: str | Path, out: str | Path, trial: str | None = None, merge: bool = False) -> Path:
    """Write the chosen trial's best adapter to ``out`` (with ``merge``: a full model with the adapter merged)."""
    summary = load_summary(experiment_dir)
    row = pick_trial(summary, trial)
    where = checkpoint_dir(row)
    dest = Path(out).expanduser()
    if dest.exists() and any(dest.iterdir()):
        raise GridrunError(f"--out {dest}: folder exists and is not empty")
    with store.local_dir(where) as ckpt:  # a checkpoint on an object store: downloaded, then removed
        return _write(ckpt, dest, merge)


def _write(ckpt: Path, dest: Path, merge: bool) -> Path:
    adapter = ckpt / "adapter"
    card = json.loads((ckpt / "gridrun_card.json").read_text())
    if not merge:
        shutil.copytree(adapter, dest, dirs_exist_ok=True)
        shutil.copy2(ckpt / "gridrun_card.json", dest / "gridrun_card.json")
        return dest

    import torch

    from trainables.model import quiet_hf

    quiet_hf()  # before peft imports bitsandbytes, which warns about optional CPU kernels on import
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gridrun.builtin import resolve_model

    # Merge into unquantized weights: merging into 4-bit weights would round the adapter away.
    base_path = resolve_model(card["base_model"])
    kwargs = {"revision": card.get("base_model_revision")} if card.get("base_model_revision") else {}
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, card["compute_dtype"]), **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_path, **kwargs).save_pretrained(dest)
    (dest / "gridrun_card.json").write_text(json.dumps({**card, "merged": True}, indent=2))
    return dest
