"""The base model's probe loss, computed once per (model, quantization, probe data, seq_len) and cached.

Every trial and every later experiment reuses the cached value; trials never recompute it. The cache is one
JSON file in the user cache folder, guarded by a file lock, keyed by a hash of everything that changes the
number (including a fingerprint of local model folders and probe files, so editing them invalidates it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridrun.builtin import builtin_name
from gridrun.builtin.tiny_model import RECIPE, recipe_hash
from gridrun.cache import cache_get, cache_put

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["baseline_key", "cached_baseline", "compute_baseline", "compute_mc_baseline"]

_VERSION = 4  # 3: probe from hub datasets, lm-eval scoring; 4: measured on the prepared model (k-bit recasts)


def _fingerprint(source: str) -> str:
    """What identifies a model or probe source's content without reading model weights."""
    short = builtin_name(source)
    if short == "tiny-general":
        return f"builtin:{short}:{recipe_hash(RECIPE)}"
    if short is not None:
        return source
    p = Path(source).expanduser()
    if p.is_file():
        return "file:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    if p.is_dir():
        parts = []
        for f in sorted(p.rglob("*")):  # hub layout keeps the files in subset folders
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.relative_to(p)}:{st.st_size}:{int(st.st_mtime)}")
        return "dir:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return source  # a hub id: its revision is part of the key


def baseline_key(spec: ExperimentSpec, kind: str = "probe") -> str:
    m, f = spec.model, spec.forgetting
    parts = {
        "v": _VERSION,
        "model": _fingerprint(m.name),
        "revision": m.revision,
        "quantization": m.quantization,
        "compute_dtype": m.compute_dtype,
        "probe": _fingerprint(f.probe),
        "probe_source": [f.probe_subset, f.probe_split, f.probe_revision],
        "probe_field": f.probe_field,
        "samples": f.samples,
        "seq_len": f.seq_len,
    }
    if kind == "mc":  # multiple-choice accuracy depends on the items, not on the probe text
        mc = [{**m.model_dump(mode="json"), "source": _fingerprint(m.source or "")} for m in f.mc]
        parts.update(probe=None, probe_source=None, probe_field=None, samples=None, seq_len=None, mc=mc)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cached_baseline(
    spec: ExperimentSpec, compute: Callable[[ExperimentSpec], Any], kind: str = "probe"
) -> tuple[Any, bool]:
    """``(value, was_cached)`` for the base model's probe loss (``kind="probe"``, a float) or multiple-choice
    accuracies (``kind="mc"``, benchmark → accuracy); ``compute(spec)`` runs only on a cache miss."""
    key = baseline_key(spec, kind)
    hit = cache_get("baselines", key)
    if hit is not None:
        return hit["value"], True
    value = compute(spec)  # outside the lock: may take minutes on a real model
    value = {k: float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)
    entry = {
        "kind": kind,
        "value": value,
        "model": spec.model.name,
        "probe": spec.forgetting.probe,
        "seq_len": spec.forgetting.seq_len,
        "quantization": spec.model.quantization,
    }
    cache_put("baselines", key, entry)
    return value, False


def _prepared_model(spec: ExperimentSpec) -> tuple[Any, Any]:
    """The model a trial starts from: the base model loaded and prepared exactly as trials do it, with a fresh
    adapter (LoRA's B is zero, so it computes the prepared base model's function). peft's k-bit preparation
    recasts layers (norms and embeddings to float32), so the raw base model is not what a trial measures: with
    bfloat16 compute its probe loss differed from an untrained trial's by up to 1e-3 relative."""
    import torch

    from trainables.model import quiet_hf
    from trainables.qlora_sft import setup_model

    quiet_hf()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    model, tok, _ = setup_model(spec)
    return model, tok


def compute_baseline(spec: ExperimentSpec) -> float:
    """The probe loss of the model a trial starts from (runs where the trials run)."""
    from evaluators.probe import probe_loss
    from trainables.general import load_probe_texts, probe_blocks

    model, tok = _prepared_model(spec)
    f = spec.forgetting
    blocks = probe_blocks(tok, load_probe_texts(f), f.seq_len, f.samples)
    return probe_loss(model, blocks)


def compute_mc_baseline(spec: ExperimentSpec) -> dict[str, float]:
    """The accuracy on each ``forgetting.mc`` benchmark of the model a trial starts from."""
    from evaluators.mc import mc_accuracy
    from trainables.general import load_mc_sets

    model, tok = _prepared_model(spec)
    return {s.name: mc_accuracy(model, tok, s.items, s.metric) for s in load_mc_sets(spec.forgetting.mc)}
