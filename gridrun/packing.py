"""How trials share a GPU (driver side): the fraction ``gpu: auto`` picks and whether an explicit fraction holds a
trial's estimated peak (:mod:`gridrun.memory`, which also holds what the trial itself needs: the allocator cap,
the out-of-memory line, the model's config), with ``evaluate.backend: vllm`` its engine's part too
(:mod:`gridrun.vllm_memory`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gridrun.errors import GridrunError
from gridrun.memory import HEADROOM, MAX_TRIALS_PER_GPU, Estimate, estimate_memory, gib
from gridrun.spec import ExperimentSpec
from gridrun.vllm_memory import EngineEstimate, estimate_engine_memory

__all__ = ["check_fraction", "describe_need", "pick_fraction", "resolve_gpu", "share_needed", "trial_need"]


def trial_need(config: Mapping[str, Any], spec: ExperimentSpec) -> tuple[Estimate, EngineEstimate | None]:
    """A trial's training estimate over the search space and, with ``evaluate.backend: vllm``, its engine's."""
    return estimate_memory(config, spec), estimate_engine_memory(config, spec)


def _total(est: Estimate, engine: EngineEstimate | None) -> int:
    return est.total + (engine.total if engine is not None else 0)


def describe_need(est: Estimate, engine: EngineEstimate | None) -> str:
    """``about 12.3 GiB (...)``: the training estimate's terms, and with an engine both parts by name."""
    if engine is None:
        return f"about {gib(est.total)} GiB ({est.breakdown()})"
    return (
        f"about {gib(_total(est, engine))} GiB: training {gib(est.total)} GiB ({est.breakdown()}) + vLLM engine "
        f"{gib(engine.total)} GiB ({engine.breakdown()})"
    )


def share_needed(needed: int, gpu_bytes: int) -> float:
    """The smallest share of a GPU, in hundredths, that holds ``needed`` bytes."""
    return math.ceil(needed / gpu_bytes * 100) / 100


def pick_fraction(needed: int, gpu_bytes: int, headroom: float = HEADROOM) -> float:
    """The smallest share 1/k of a GPU (k = 2..8) holding ``needed`` bytes x ``headroom``, else the whole GPU
    where ``needed`` fits in it at all."""
    for k in range(MAX_TRIALS_PER_GPU, 1, -1):
        if gpu_bytes / k >= needed * headroom:
            return round(1 / k, 4)
    if needed <= gpu_bytes:
        return 1.0
    raise GridrunError(
        f"resources.gpu: auto — a trial needs about {gib(needed)} GiB, more than a whole {gib(gpu_bytes)} GiB GPU; "
        "lower train.batch_size, data.max_seq_len or evaluate.batch_size, or use gradient checkpointing"
    )


def check_fraction(fraction: float, gpu_bytes: int, est: Estimate, engine: EngineEstimate | None = None) -> None:
    """Refuse, in one line with the numbers, a share of a GPU that the estimate (training, and the vLLM engine
    where there is one) does not fit in."""
    share = fraction * gpu_bytes if fraction < 1 else gpu_bytes
    if engine is not None and _total(est, engine) > share:
        raise GridrunError(
            f"resources.gpu: {fraction:g} of a {gib(gpu_bytes)} GiB GPU is {gib(share)} GiB; a trial needs "
            f"{describe_need(est, engine)}, a share of at least {share_needed(_total(est, engine), gpu_bytes):g}; "
            "use gpu: auto, a larger fraction, or smaller batches"
        )
    if est.total > share:
        raise GridrunError(
            f"resources.gpu: {fraction:g} of a {gib(gpu_bytes)} GiB GPU is {gib(share)} GiB; a trial needs about "
            f"{gib(est.total)} GiB ({est.breakdown()}); use gpu: auto, a larger fraction, or smaller batches"
        )


def resolve_gpu(
    spec: ExperimentSpec, config: Mapping[str, Any] | None, gpu_bytes: int | None, gpus: float
) -> tuple[float, str | None]:
    """``resources.gpu`` as launch gives it to Ray, and a line to print: ``auto`` becomes the smallest 1/k of a
    GPU holding the estimate x :data:`HEADROOM` (0, CPU trials, where there is no GPU); an explicit share is
    checked against the estimate where the GPU's size and the model's config are known. With ``evaluate.backend:
    vllm`` the estimate is the training's plus the engine's, which starts beside the trial's model.

    Args:
        config: the model's config (None: not readable).
        gpu_bytes: one GPU's memory (None: unknown).
        gpus: GPUs in the cluster.
    """
    gpu = spec.resources.gpu
    if gpu != "auto":
        if gpu > 0 and gpu_bytes and config is not None:
            check_fraction(gpu, gpu_bytes, *trial_need(config, spec))
        return gpu, None
    if gpus <= 0:
        if spec.model.quantization != "none" and spec.model.compute_dtype == "float16":
            raise GridrunError("model.compute_dtype: float16 4/8-bit matmuls need a GPU, and gpu: auto found none")
        return 0.0, "resources.gpu: auto — no GPU here: trials run on CPU (gpu 0)"
    if config is None:
        raise GridrunError(f"resources.gpu: auto needs the config of {spec.model.name}, which could not be read")
    if not gpu_bytes:
        raise GridrunError("resources.gpu: auto could not read the GPU's memory; set resources.gpu_memory_gb")
    est, engine = trial_need(config, spec)
    share = pick_fraction(_total(est, engine), gpu_bytes)
    estimated = f"{gib(est.total)} GiB ({est.breakdown()})" if engine is None else describe_need(est, engine)
    return share, (
        f"resources.gpu: auto → {share:g} of a {gib(gpu_bytes)} GiB GPU ({gib(share * gpu_bytes)} GiB) for a trial "
        f"estimated at {estimated}"
    )
