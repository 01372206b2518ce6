"""A trial's share of a GPU at run time: the cap torch's allocator gets, and the one line a trial that outgrew
its share fails with (the estimate that chose the share is :mod:`gridrun.memory`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gridrun.errors import GridrunError
from gridrun.memory import CUDA_CONTEXT_BYTES, gib
from gridrun.spec import ExperimentSpec
from gridrun.vllm_memory import estimate_engine_memory

__all__ = ["allocator_fraction", "engine_beside", "oom_message"]


def allocator_fraction(fraction: float, gpu_bytes: int, beside: int = 0) -> float:
    """What ``torch.cuda.set_per_process_memory_fraction`` gets for a share: the share less the CUDA context,
    which lives outside torch's allocator, so the trials packed on one GPU fit side by side, and less ``beside``:
    what another process holds inside the same share (a vLLM engine's part, :func:`engine_beside`)."""
    return max(0.01, (fraction * gpu_bytes - CUDA_CONTEXT_BYTES - beside) / gpu_bytes)


def engine_beside(config: Mapping[str, Any] | None, spec: ExperimentSpec) -> int:
    """Bytes of the trial's share its vLLM engine holds in a process of its own (``evaluate.backend: vllm``; vLLM
    runs its engine core in a child process unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the engine's planned
    part, which the share was chosen to hold beside training. 0 with the HF backend, with the engine inside the
    trial's own process (its allocations are then the capped allocator's own), or where the model's config is
    unknown (no estimate: the share is then the training's alone)."""
    if spec.evaluate.backend != "vllm" or config is None:
        return 0
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1").strip().lower() in ("0", "false"):
        return 0
    try:
        engine = estimate_engine_memory(config, spec)
    except GridrunError:  # not a dense decoder's config: no estimate, as the share had none
        return 0
    return engine.total if engine is not None else 0


def oom_message(
    fraction: float, gpu_bytes: int, estimate: int | None, peak: int, detail: str = "", beside: int = 0
) -> str:
    """The one line a trial that outgrew its GPU share fails with (its neighbours keep running); ``beside``: the
    part of the share its vLLM engine holds (:func:`engine_beside`)."""
    est = f"estimated {gib(estimate)} GiB" if estimate else "no estimate"
    engine = f", {gib(beside)} GiB of it the vLLM engine's" if beside else ""
    return (
        f"resources.gpu: the trial ran out of its share of the GPU, {fraction:g} of {gib(gpu_bytes)} GiB = "
        f"{gib(fraction * gpu_bytes)} GiB{engine} (training {est}, measured peak {gib(peak)} GiB"
        f"{'; ' + detail if detail else ''}); "
        "give it a larger fraction (or gpu: auto), or lower train.batch_size, data.max_seq_len or evaluate.batch_size"
    )
