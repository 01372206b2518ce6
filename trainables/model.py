"""Base model (nf4 | int8 | none) + LoRA adapter, as flat helpers the trainable calls in order."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from gridrun.builtin import resolve_model
from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec, LoraSpec, ModelSpec
from trainables.precision import model_device, resolve

__all__ = [
    "add_lora",
    "cap_gpu_memory",
    "load_base",
    "pick_device",
    "prepare_base",
    "quiet_bnb_kernel_notice",
    "quiet_hf",
]


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


#: Logger name -> the start of the one message dropped from it (see ``quiet_bnb_kernel_notice``).
_KERNEL_NOTICES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


def quiet_bnb_kernel_notice() -> None:
    """Drop bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning, logged when it is
    imported on a CPU with AVX512-BF16, and the ``kernels`` package's note on the same optional hub kernel when the
    hub is off: nothing a user can act on, printed by every trial's worker. Their other warnings and errors still
    show. Set before the import: a module's logger is looked up by name, so it gets its filter whenever it is made."""
    for name, prefix in _KERNEL_NOTICES.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in target.filters):
            target.addFilter(_DropMessage(prefix))


def quiet_hf() -> None:
    """Silence progress bars and kernel-hub notices that would flood every trial's log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    quiet_bnb_kernel_notice()
    # peft calls transformers' deprecated is_gradient_checkpointing: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.getLogger("transformers.integrations").setLevel(logging.ERROR)


def pick_device(gpu: float | str) -> str:
    """``cuda`` for a trial with a GPU share, else ``cpu``; ``auto`` (a spec launch did not resolve, such as
    one given to ``evaluate_adapter``) means the GPU where there is one."""
    import torch

    if gpu == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if float(gpu) > 0:
        if not torch.cuda.is_available():
            raise GridrunError("resources.gpu: a GPU was requested but CUDA is not available in this trial")
        return "cuda"
    return "cpu"


def cap_gpu_memory(spec: ExperimentSpec) -> int:
    """Cap torch's CUDA allocator at this trial's share of the GPU (``resources.gpu``), less the CUDA context
    (outside the allocator) and less its vLLM engine's part where the engine runs in a process of its own, so that
    the trials packed on one GPU fit side by side and one that outgrows its share gets an OutOfMemoryError
    instead of its neighbours or its engine. A whole GPU (or more) is not capped. Returns the GPU's memory."""
    import torch

    from gridrun.gpu_share import allocator_fraction, engine_beside
    from gridrun.model_config import model_config
    from gridrun.sources import hub_offline

    gpu = spec.resources.gpu
    total = int(torch.cuda.get_device_properties(0).total_memory)
    if gpu != "auto" and 0 < float(gpu) < 1:
        beside = 0
        if spec.evaluate.backend == "vllm":  # the HF backend generates inside the capped process: nothing beside
            config = model_config(spec)
            if config is None and not hub_offline():
                config = model_config(spec, hub=True)  # a node that has not fetched the model yet: its config alone
            beside = engine_beside(config, spec)
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(float(gpu), total, beside))
    return total


def load_base(model: ModelSpec, device: str) -> tuple[Any, Any]:
    """Load tokenizer and frozen base model as the spec's ``model`` section says."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = resolve_model(model.name)
    precision = resolve(model, device)
    dtype = getattr(torch, precision.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}, "attn_implementation": precision.attn}
    if model.revision:
        kwargs["revision"] = model.revision
    if model.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    elif model.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=model.revision)
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise GridrunError(f"model.name: cannot load {model.name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    base.config.use_cache = True
    for module in base.modules():
        # bitsandbytes repacks 4-bit weights for a bf16 CPU inference kernel the first time a module runs in
        # eval mode, and leaves them packed: training after an eval round would then run on other numerics
        # than training before it, and a restored trial would not continue exactly. One kernel throughout.
        if getattr(module, "support_avx512bf16_for_cpu", False):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010
    for p in base.parameters():
        p.requires_grad_(False)
    return base, tok


def prepare_base(base: Any, model: ModelSpec) -> Any:
    """The loaded base as trials compute with it (training, and ``evaluate_adapter`` re-scoring their adapters).

    Under 4/8-bit quantization peft's k-bit preparation upcasts the embeddings, norms and head to float32, which
    keeps the residual stream in float32 whatever autocast does (bitsandbytes returns a projection's output in its
    input's dtype). That stays for float32 and float16 compute (float16's range does not hold the residual stream
    of every model); with bfloat16 (float32's range) the base stays as loaded, so the residual stream and the
    logits are bfloat16: the norms still compute their statistics in float32 and the loss upcasts the logits.
    """
    from peft import prepare_model_for_kbit_training

    if model.quantization != "none" and resolve(model, model_device(base)).dtype != "bfloat16":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return base


def add_lora(base: Any, lora: LoraSpec, model: ModelSpec) -> Any:
    """Wrap ``base``, prepared as trials compute with it (:func:`prepare_base`), with a fresh LoRA adapter
    (initialised from the current torch RNG state)."""
    from peft import LoraConfig, get_peft_model

    base = prepare_base(base, model)
    if model.gradient_checkpointing:
        # transformers' current name (gradient_checkpointing_enable is deprecated) and torch's non-reentrant
        # checkpoint: it needs no input that requires grad, and torch warns when use_reentrant is left unset
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise GridrunError(f"lora.target_modules: {', '.join(missing)} not found in the model")
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(base, cfg)
