"""A bitsandbytes 4-bit layer's weight dequantized once, for generating on CPU (imports torch: load lazily)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["DequantizedLinear", "LoraOnDequantized", "lora_twin", "swappable_4bit"]


class DequantizedLinear(torch.nn.Module):
    """Computes what bitsandbytes computes for a 4-bit layer on CPU without gradients, from a weight dequantized
    once: its ``gemm_4bit``/``gemv_4bit`` there dequantize the whole weight on every call and then run
    ``F.linear`` in the compute dtype (input cast to it, output cast back), so the same dequantized values through
    the same ``F.linear`` give the same numbers bit for bit, without a dequantization per layer and token."""

    def __init__(self, layer: Any) -> None:
        import bitsandbytes as bnb

        super().__init__()
        dtype = layer.compute_dtype or torch.float32
        w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.bias = None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().to(dtype), False)
        # plain attributes, read at every call (a decode step makes hundreds) without nn.Module's __getattr__
        self.tensors = (w, None if self.bias is None else self.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, *self.tensors)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x.to(w.dtype), w, b).to(x.dtype)``; where the dtypes agree each ``.to`` returns its input itself,
    so skipping the call changes nothing but a dispatch."""
    y = torch.nn.functional.linear(x if x.dtype == w.dtype else x.to(w.dtype), w, b)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def swappable_4bit(module: Any) -> bool:
    """A bitsandbytes 4-bit layer on CPU whose inference path is dequantize + ``F.linear`` (not CPU-packed)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    if not isinstance(module, bnb.nn.Linear4bit) or module.weight.device.type != "cpu":
        return False
    state = getattr(module.weight, "quant_state", None)
    return state is not None and not getattr(state, "packing_format_for_cpu", False)


class LoraOnDequantized(torch.nn.Module):
    """peft's vanilla-LoRA forward on a bitsandbytes 4-bit layer (eval mode, one active adapter, not merged, no
    autocast), on the layer's dequantized twin: ``base(x) + B(A(x)) * scaling``, the adapter's input cast to its
    dtype and its output to the result's, the same numbers bit for bit without peft's per-call Python work (which
    at a small model's decode step costs more than the arithmetic) and with fewer passes over the output:

    - a power-of-two ``scaling`` (``alpha / r`` for the usual powers of two) is folded into a copy of A: multiplying
      by a power of two is exact in binary floating point (outside the subnormal range), so every rounding in
      ``x @ (s A)^T`` and then through B is ``s`` times the unscaled one, as ``(B(A(x))) * s`` rounds it;
    - the adapter's output is added into the base's output in place (``addmm_`` where the scaling is folded, the
      same ``mm`` then ``add`` otherwise), not into a fresh tensor: a large output's allocation and pass cost more
      than its arithmetic on CPU. tests/evaluators_tests/test_generation.py checks the sum against peft's.

    Built per eval round (``HFGenerator.inference``): the folded copy of A is the adapter's weights of that round.
    """

    def __init__(self, base: DequantizedLinear, lora_a: torch.nn.Linear, lora_b: torch.nn.Linear, scaling: float):
        super().__init__()
        self.base, self.scaling = base, scaling
        self.fold = math.frexp(scaling)[0] == 0.5  # a power of two (mantissa exactly 1/2)
        a = lora_a.weight.detach()
        # plain attributes (no nn.Module lookup per call); the base twin's tensors used directly, not its module
        self.a = a * scaling if self.fold else a
        self.b = lora_b.weight.detach()
        self.bt = self.b.t()
        self.tensors = base.tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = _linear(x, *self.tensors)  # a fresh tensor (F.linear's): adding into it in place changes nothing else
        a = self.a
        h = torch.nn.functional.linear(x if x.dtype == a.dtype else x.to(a.dtype), a)
        if self.fold and result.dtype == a.dtype:
            result.view(-1, result.shape[-1]).addmm_(h.view(-1, h.shape[-1]), self.bt)
            return result
        out = torch.nn.functional.linear(h, self.b)
        if not self.fold:
            out.mul_(self.scaling)
        return result.add_(out.to(result.dtype))


def lora_twin(layer: Any, base: DequantizedLinear) -> torch.nn.Module | None:
    """What computes a peft LoRA layer over a 4-bit base exactly, from ``base`` (its base's dequantized twin):
    ``base`` itself when the adapter is off, :class:`LoraOnDequantized` for one vanilla adapter; None when peft
    does more than that (merged, several or variant adapters, biases in the adapter, autocast on)."""
    if torch.is_autocast_enabled() or getattr(layer, "merged", True):
        return None
    if layer.disable_adapters:
        return base
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return base if not active else None
    a = active[0]
    lora_a, lora_b = layer.lora_A[a], layer.lora_B[a]
    if lora_a.bias is not None or lora_b.bias is not None or not isinstance(layer.scaling[a], int | float):
        return None
    return LoraOnDequantized(base, lora_a, lora_b, float(layer.scaling[a]))
