"""What ``model.compute_dtype: auto`` and ``model.attn_implementation: auto`` become on a device.

Pure choices, no torch at import: a trial resolves them on its own device (:mod:`trainables.precision`, with
:func:`bf16_supported` asking torch, runs the autocast), the vLLM backend resolves the dtype for the GPU it
generates on, the driver resolves them for the memory estimate and the base scores' cache key, and ``gridrun
validate`` refuses a kernel that is not installed. One rule for all of them, so the estimate, the baselines and
the generator describe the numerics the trial computes in.
"""

from __future__ import annotations

import functools
import importlib.util

from gridrun.errors import GridrunError
from gridrun.spec import ModelSpec

__all__ = [
    "SIXTEEN_BIT",
    "bf16_supported",
    "check_attn_implementation",
    "flash_attn_installed",
    "resolve_attn",
    "resolve_dtype",
]

#: The dtypes that run under ``torch.autocast`` (float32 runs as loaded, no autocast).
SIXTEEN_BIT = frozenset({"bfloat16", "float16"})


def resolve_dtype(model: ModelSpec, device: str, bf16_supported: bool = True) -> str:
    """``model.compute_dtype`` on ``device``: auto is bfloat16 on a GPU that supports it (Ampere and later),
    float16 on one that does not, float32 on CPU (where 4-bit matmuls and autocast gain nothing in speed)."""
    if model.compute_dtype != "auto":
        return model.compute_dtype
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_supported else "float16"


@functools.cache
def bf16_supported(device: str) -> bool:
    """Whether ``device`` computes in bfloat16, as torch says (a GPU: Ampere and later; CPU: yes). Asked where the
    work runs: a trial on its device, the vLLM backend for the GPU it generates on. Imports torch when called."""
    if device != "cuda":
        return True
    import torch

    return bool(torch.cuda.is_bf16_supported())


def flash_attn_installed() -> bool:
    """Whether the ``flash_attn`` package (FlashAttention-2's kernels) is importable here."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn(model: ModelSpec, device: str, dtype: str) -> str:
    """``model.attn_implementation`` for transformers: auto is flash_attention_2 on a GPU computing in 16 bits
    where ``flash_attn`` is installed (no mask tensor at all, and padding-free rows run as variable-length
    sequences), else sdpa."""
    if model.attn_implementation != "auto":
        return model.attn_implementation
    if device == "cuda" and dtype in SIXTEEN_BIT and flash_attn_installed():
        return "flash_attention_2"
    return "sdpa"


def check_attn_implementation(model: ModelSpec, device: str | None = None) -> None:
    """Raise one line when flash_attention_2 is asked for and cannot run: the package missing, or (``device``
    known) a CPU trial or float32 compute, which FlashAttention-2 has no kernels for."""
    if model.attn_implementation != "flash_attention_2":
        return
    if not flash_attn_installed():
        raise GridrunError(
            "model.attn_implementation: flash_attention_2 needs the flash_attn package, which is not installed "
            "(pip install flash-attn; or use sdpa)"
        )
    if device is not None and device != "cuda":
        raise GridrunError("model.attn_implementation: flash_attention_2 runs on a GPU only; use sdpa on CPU")
    if model.compute_dtype == "float32":
        raise GridrunError("model.attn_implementation: flash_attention_2 needs compute_dtype bfloat16 or float16")
