"""A trial's share of a GPU at run time: the cap torch's allocator gets, and the one line a trial that outgrew
its share fails with (the estimate that chose the share is :mod:`gridrun.memory`)."""

from __future__ import annotations

from gridrun.memory import CUDA_CONTEXT_BYTES, gib

__all__ = ["allocator_fraction", "oom_message"]


def allocator_fraction(fraction: float, gpu_bytes: int) -> float:
    """What ``torch.cuda.set_per_process_memory_fraction`` gets for a share: the share less the CUDA context,
    which lives outside torch's allocator, so the trials packed on one GPU fit side by side."""
    return max(0.01, (fraction * gpu_bytes - CUDA_CONTEXT_BYTES) / gpu_bytes)


def oom_message(fraction: float, gpu_bytes: int, estimate: int | None, peak: int, detail: str = "") -> str:
    """The one line a trial that outgrew its GPU share fails with (its neighbours keep running)."""
    est = f"estimated {gib(estimate)} GiB" if estimate else "no estimate"
    return (
        f"resources.gpu: the trial ran out of its share of the GPU, {fraction:g} of {gib(gpu_bytes)} GiB = "
        f"{gib(fraction * gpu_bytes)} GiB ({est}, measured peak {gib(peak)} GiB{'; ' + detail if detail else ''}); "
        "give it a larger fraction (or gpu: auto), or lower train.batch_size, data.max_seq_len or evaluate.batch_size"
    )
