"""A trial's numerics on its device: the compute dtype, the attention kernel, autocast and fp16's GradScaler.

``model.compute_dtype`` and ``model.attn_implementation`` are resolved here on the trial's own device (the rule
is :mod:`gridrun.precision`'s, shared with the memory estimate). Forwards of training and of every eval step run
under :func:`autocast`; float16 steps go through a ``torch.amp.GradScaler`` (:func:`optimizer_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gridrun.precision import SIXTEEN_BIT, bf16_supported, check_attn_implementation, resolve_attn, resolve_dtype
from gridrun.spec import ExperimentSpec, ModelSpec

__all__ = ["Precision", "autocast", "grad_scaler", "model_device", "optimizer_step", "resolve", "resolved_spec"]


@dataclass(frozen=True)
class Precision:
    """What a trial computes in: ``dtype`` (a torch dtype's name) and ``attn`` (transformers' attn_implementation)."""

    dtype: str
    attn: str

    @property
    def autocast(self) -> bool:
        return self.dtype in SIXTEEN_BIT


def resolve(model: ModelSpec, device: str) -> Precision:
    """``model``'s compute dtype and attention kernel on ``device`` (one line when flash_attention_2 cannot run)."""
    check_attn_implementation(model, device)
    dtype = resolve_dtype(model, device, bf16_supported(device))
    return Precision(dtype, resolve_attn(model, device, dtype))


def resolved_spec(spec: ExperimentSpec, device: str) -> ExperimentSpec:
    """``spec`` with ``auto`` compute dtype and attention kernel replaced by what they are on ``device``: what the
    trial's checkpoint card records (``gridrun export`` loads the base in that dtype)."""
    p = resolve(spec.model, device)
    model = spec.model.model_copy(update={"compute_dtype": p.dtype, "attn_implementation": p.attn})
    return spec.model_copy(update={"model": model})


def model_device(model: Any) -> str:
    """``cuda`` or ``cpu``: where ``model``'s parameters are."""
    return str(next(model.parameters()).device.type)


@contextlib.contextmanager
def autocast(spec: ExperimentSpec, model: Any) -> Iterator[None]:
    """Run forwards (and the backward they start) in the spec's compute dtype on ``model``'s device: matmuls and
    attention in 16 bits, what torch keeps in float32 for accuracy (softmax, norms' statistics, losses) in
    float32. float32 compute runs as loaded."""
    import torch

    device = model_device(model)
    p = resolve(spec.model, device)
    if not p.autocast:
        yield
        return
    with torch.autocast(device_type=device, dtype=getattr(torch, p.dtype)):
        yield


def grad_scaler(spec: ExperimentSpec, device: str) -> Any:
    """A ``torch.amp.GradScaler`` for float16 compute (its 5 exponent bits underflow small gradients without
    one), disabled otherwise: its calls are then plain ``backward`` and ``step``."""
    import torch

    return torch.amp.GradScaler(device, enabled=resolve(spec.model, device).dtype == "float16")


def optimizer_step(opt: Any, scaler: Any, params: list[Any], max_grad_norm: float) -> bool:
    """Unscale, clip, step and update: the order the GradScaler needs (clipping scaled gradients would clip at
    the wrong norm). Returns False when the scaler skipped the step (an inf or NaN in the scaled gradients: the
    scale was too large, nothing diverged), so the caller leaves the learning-rate schedule where it is."""
    import torch

    scaler.unscale_(opt)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(opt)
    scaler.update()
    return before is None or scaler.get_scale() >= before
