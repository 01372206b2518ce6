"""A trial's memory figures: its measured peak, the estimate reported beside it, and the one-line error of a trial
that ran out of its GPU share."""

from __future__ import annotations

import re
import resource
from typing import Any

from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec

__all__ = ["mem_estimate", "oom_error", "peak_mem_mb"]


def peak_mem_mb(device: str) -> float:
    """``perf/peak_mem_mb``: torch's allocator peak on a GPU, the process's peak RSS on CPU."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def mem_estimate(spec: ExperimentSpec, config: dict[str, Any]) -> dict[str, float]:
    """``perf/mem_estimate_mb``: the estimated peak of torch's allocator on a GPU, next to ``perf/peak_mem_mb``
    (empty where the model's config is not a dense decoder's)."""
    from gridrun.memory import estimate_trial_memory

    try:
        return {"perf/mem_estimate_mb": estimate_trial_memory(config, spec).allocated / 2**20}
    except GridrunError:
        return {}


def oom_error(spec: ExperimentSpec, message: str, gpu_bytes: int, peak: int) -> GridrunError:
    """The one-line error of a trial that ran out of its GPU share: the share, the estimate, the measured peak
    and torch's 'Tried to allocate ...'."""
    from gridrun.gpu_share import engine_beside, oom_message
    from gridrun.memory import estimate_trial_memory
    from gridrun.model_config import model_config

    gpu = spec.resources.gpu
    config = model_config(spec)
    try:
        estimate = estimate_trial_memory(config, spec).total if config else None
    except GridrunError:
        estimate = None
    asked = re.search(r"Tried to allocate [\d.]+ \w+", message)
    detail = asked.group(0) if asked else ""
    fraction = 1.0 if gpu == "auto" else min(gpu, 1.0)
    beside = engine_beside(config, spec) if fraction < 1 else 0  # a whole GPU is not capped (cap_gpu_memory)
    return GridrunError(oom_message(fraction, gpu_bytes, estimate, peak, detail, beside))
