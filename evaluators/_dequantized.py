"""A bitsandbytes 4-bit layer's weight dequantized once, for generating on CPU (imports torch: load lazily)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DequantizedLinear", "swappable_4bit"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


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
