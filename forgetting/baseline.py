"""The base model's value of each forgetting measure, computed once per (model, measure inputs) and cached.

Every trial and every later experiment reuses the cached values; trials never recompute them. The cache is one
JSON table in the user cache folder (``gridrun.cache``), keyed by a hash of everything that changes the number:
the model (with a fingerprint of local model folders), its quantization, and what the measure says its value
depends on (a fingerprint of local probe and benchmark files included, so editing them invalidates it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetting._base import MEASURES, Baselines, Measure, active_measures
from gridrun.builtin import builtin_name
from gridrun.builtin.tiny_model import RECIPE, recipe_hash
from gridrun.cache import cache_get, cache_put

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["baseline_key", "cached_baselines", "fingerprint"]

# 3: probe from hub datasets, lm-eval scoring; 4: on the prepared model; 5: one entry per measure; 6: 16-bit compute
# under autocast, base weights not upcast under bfloat16, the attention kernel in the key
_VERSION = 6

#: compute(spec, measure names) -> their base values (runs where the trials run: a Ray task at launch).
Compute = Callable[["ExperimentSpec", list[str]], Baselines]


def fingerprint(source: str) -> str:
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


def baseline_key(spec: ExperimentSpec, measure: Measure) -> str:
    """The cache key of ``measure``'s base value for ``spec``'s model."""
    m, gpu = spec.model, spec.resources.gpu
    parts = {
        "v": _VERSION,
        "measure": measure.name,
        "model": fingerprint(m.name),
        "revision": m.revision,
        "quantization": m.quantization,
        # auto is float32 on CPU trials and a 16-bit dtype on GPU ones: the numbers differ
        "compute_dtype": m.compute_dtype if m.compute_dtype != "auto" else f"auto/{'cpu' if gpu == 0 else 'cuda'}",
        "attn_implementation": m.attn_implementation,
        **measure.base_key(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cached_baselines(spec: ExperimentSpec, compute: Compute) -> tuple[Baselines, bool]:
    """``(base values, all were cached)`` for every measure the spec turns on that has one; the misses are
    computed in one ``compute`` call (one model load) and cached."""
    measures = [m for m in active_measures(spec) if m.Base is not None]
    out: dict[str, Any] = {}
    keys = {m.name: baseline_key(spec, m) for m in measures}
    for m in measures:
        hit = cache_get("baselines", keys[m.name])
        if hit is not None:
            out[m.name] = Baselines.from_json({m.name: hit["value"]}).values[m.name]
    missing = [m.name for m in measures if m.name not in out]
    if missing:
        fresh = compute(spec, missing)  # outside the lock: may take minutes on a real model
        for name in missing:
            value = fresh.of(name)
            out[name] = value
            entry = {
                "measure": name,
                "value": Baselines({name: value}).to_json()[name],
                "model": spec.model.name,
                "quantization": spec.model.quantization,
            }
            cache_put("baselines", keys[name], entry)
    return Baselines({n: out[n] for n in MEASURES if n in out}), not missing
