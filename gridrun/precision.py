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
    "cuda_capability",
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
    """Whether ``device`` computes in bfloat16 natively (a GPU: Ampere and later; CPU: yes). torch's default also
    says yes on older GPUs, where a bfloat16 tensor can merely be made (emulated, slow, and refused by vLLM and
    fused attention kernels): asked without emulation. Asked where the work runs: a trial on its device, the vLLM
    backend for the GPU it generates on. Imports torch when called."""
    if device != "cuda":
        return True
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


@functools.cache
def cuda_capability() -> tuple[int, int] | None:
    """The compute capability of this process's GPU (``(8, 0)`` for an A100), None without CUDA or on ROCm."""
    import torch

    if torch.version.hip or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def _pre_ampere() -> tuple[int, int] | None:
    """This GPU's capability where it is older than Ampere (FlashAttention-2 needs 8.0 or later), else None."""
    cap = cuda_capability()
    return cap if cap is not None and cap[0] < 8 else None


def flash_attn_installed() -> bool:
    """Whether the ``flash_attn`` package (FlashAttention-2's kernels) is importable here."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn(model: ModelSpec, device: str, dtype: str) -> str:
    """``model.attn_implementation`` for transformers: auto is flash_attention_2 on an Ampere or newer GPU
    computing in 16 bits where ``flash_attn`` is installed (no mask tensor at all, and padding-free rows run as
    variable-length sequences), else sdpa."""
    if model.attn_implementation != "auto":
        return model.attn_implementation
    if device == "cuda" and dtype in SIXTEEN_BIT and flash_attn_installed() and _pre_ampere() is None:
        return "flash_attention_2"
    return "sdpa"


def check_attn_implementation(model: ModelSpec, device: str | None = None) -> None:
    """Raise one line when flash_attention_2 is asked for and cannot run: the package missing, or (``device``
    known) a CPU trial, a GPU older than Ampere or float32 compute, which FlashAttention-2 has no kernels for."""
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
    if device == "cuda" and (cap := _pre_ampere()) is not None:
        raise GridrunError(
            f"model.attn_implementation: flash_attention_2 runs on Ampere or newer GPUs (compute capability 8.0+); "
            f"this GPU is {cap[0]}.{cap[1]}: use sdpa (or auto)"
        )
