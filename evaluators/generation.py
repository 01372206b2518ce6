"""The generation seam: one ``Generator`` interface (model's prompts + settings → completions), backends by name.

A trial builds its generator once (:func:`build_generator`, from ``evaluate.backend``) and every evaluator, the
judge measure and ``gridrun compare`` ask it for completions. ``hf`` is transformers' ``generate`` on the trial's
own model (:class:`HFGenerator`); ``vllm`` (the optional extra ``gridrun[vllm]``, :mod:`evaluators.vllm_backend`)
loads the base model once in vLLM and serves each eval round's adapter as a LoRA request.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gridrun.errors import GridrunError

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = [
    "BACKENDS",
    "GenerationSettings",
    "Generator",
    "HFGenerator",
    "build_generator",
    "check_backend",
    "cut_at_stop",
    "generate",
    "stop_token_ids",
]


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are produced; comes from the spec's ``evaluate`` section, never from an evaluator.

    ``stop``: strings that end a completion early (it ends with the first one it contains); the end-of-sequence
    token always ends one.
    """

    max_new_tokens: int = 64
    batch_size: int = 32
    greedy: bool = True
    stop: tuple[str, ...] = ()


class Generator(ABC):
    """Completions for rendered prompts, in their order, special tokens stripped; built once per trial.

    ``model`` is what is evaluated: the trial's model as it stands this round (a peft model with its adapter, or
    with the adapter disabled for base scores), or a plain base model. A backend that keeps its own copy of the
    base (vLLM) reads only the adapter from it.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def generate(self, model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
        """Greedy (``settings.greedy``) completions of ``prompts`` by ``model``."""

    def reserve(self, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> None:  # noqa: B027  # optional
        """Say which prompts (and how many new tokens each) this generator will be asked for, before it is first
        used: a backend that sizes itself once (vLLM's context length) sizes itself for the longest."""

    def close(self) -> None:  # noqa: B027  # optional: most backends hold nothing to release
        """Release what the backend holds (an engine, temporary folders); the generator is unusable after."""

    @contextmanager
    def inference(self, model: Any) -> Iterator[None]:
        """The model as this backend runs it for inference, for the eval round's other forwards too (probe,
        multiple-choice, answer loss): the same numbers, perhaps sooner. By default the model as it is."""
        yield


class HFGenerator(Generator):
    """transformers' ``generate`` on the model itself, length-sorted batches with left padding.

    Args:
        dequantize_on_cpu: on CPU, run a 4-bit base's layers from weights dequantized once per trial (cached; the
            base is frozen) instead of bitsandbytes dequantizing every weight at every generated token, and the
            peft LoRA layers around them as peft computes them minus its per-call Python work. The completions
            are the same bit for bit (tests check it against the old code); the cost is a compute-dtype copy of
            the base's 4-bit layers in RAM. Never on a GPU, where that copy would take the memory QLoRA saves.
    """

    name = "hf"

    def __init__(self, dequantize_on_cpu: bool = True) -> None:
        self.dequantize_on_cpu = dequantize_on_cpu
        self._dequantized: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()
        self._viewing: set[int] = set()  # models inside ``inference`` now
        self._encoded: tuple[Any, tuple[Any, ...], list[tuple[list[int], Any]]] | None = None

    def _dequantize(self, layer: Any) -> Any:
        """``layer``'s dequantized twin, made once (the base is frozen; a reloaded weight is dequantized again)."""
        from evaluators._dequantized import DequantizedLinear

        ptr = layer.weight.data_ptr()
        cached = self._dequantized.get(layer)
        if cached is None or cached[0] != ptr:
            cached = (ptr, DequantizedLinear(layer))
            self._dequantized[layer] = cached
        return cached[1]

    def _twin(self, module: Any) -> Any:
        """What computes ``module`` exactly from dequantized weights: a 4-bit layer's twin, or a peft LoRA layer
        over one as peft computes it (``lora_twin``); None for anything else."""
        from evaluators._dequantized import lora_twin, swappable_4bit

        if swappable_4bit(module):
            return self._dequantize(module)
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_A") and swappable_4bit(base):
            return lora_twin(module, self._dequantize(base))
        return None

    @contextmanager
    def inference(self, model: Any) -> Iterator[None]:
        """Swap each CPU 4-bit layer (and the peft LoRA layer around it) for its exact twin for the duration,
        then put the originals back (nested: the twins are in place already, nothing is walked or swapped)."""
        import torch

        if id(model) in self._viewing:  # nested: the twins are in place already, nothing more to swap
            yield
            return
        swaps: list[tuple[Any, str, Any]] = []
        self._viewing.add(id(model))
        try:
            # under autocast the ops run in other dtypes than the twins were checked against: leave the model be
            if self.dequantize_on_cpu and not torch.is_autocast_enabled("cpu"):
                replaced: set[int] = set()
                for parent in list(model.modules()):  # parents before their children
                    if id(parent) in replaced:
                        continue
                    for child_name, child in list(parent.named_children()):
                        twin = self._twin(child)
                        if twin is not None:
                            swaps.append((parent, child_name, child))
                            setattr(parent, child_name, twin)
                            replaced.add(id(child))
            yield
        finally:
            for parent, child_name, child in reversed(swaps):
                setattr(parent, child_name, child)
            self._viewing.discard(id(model))

    def _batches(self, tokenizer: Any, prompts: list[str], batch_size: int) -> list[tuple[list[int], Any]]:
        """The prompts' rows in length-sorted batches (longest first) and each batch tokenized with left padding;
        remembered for the last prompts asked (a trial's eval round asks for the same prompts every round)."""
        key = (tuple(prompts), batch_size)
        if self._encoded is not None and self._encoded[0] is tokenizer and self._encoded[1] == key:
            return self._encoded[2]
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        batches = []
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            texts = [prompts[i] for i in rows]
            enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
            batches.append((rows, enc))
        self._encoded = (tokenizer, key, batches)
        return batches

    def generate(self, model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
        """Prompts are tokenized without added special tokens, exactly as in training, and generated in batches
        of similar length (longest first: the left padding each row carries is small) with the tokenizer's left
        padding; a row's completion does not depend on the batch it is in. On CUDA the KV cache is static (no
        reallocation as sequences grow)."""
        import torch

        if not prompts:
            return []
        was_training = model.training
        if was_training:  # a switch walks every module (transformers re-kernelizes): none when already in eval mode
            model.eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        device = next(p.device for p in model.parameters())
        # on CUDA a static cache, without transformers' auto-compile of the forward it would trigger for an
        # unquantized base: each eval round's other batch shapes and adapter on/off recompile (minutes a round)
        extra: dict[str, Any] = (
            {"cache_implementation": "static", "disable_compile": True} if device.type == "cuda" else {}
        )
        # greedy means greedy: the penalties a hub model's generation config sets for chat sampling (Qwen2.5-Instruct:
        # repetition_penalty) apply to greedy decoding in transformers, and vLLM, given explicit sampling
        # parameters, applies none of them; the two backends score alike only without them
        extra |= {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
        if settings.stop:
            extra |= {"stop_strings": list(settings.stop), "tokenizer": tokenizer}
        out: dict[int, str] = {}
        try:
            with self.inference(model):
                for rows, enc in self._batches(tokenizer, prompts, settings.batch_size):
                    with torch.no_grad():
                        gen = model.generate(
                            input_ids=enc["input_ids"].to(device),
                            attention_mask=enc["attention_mask"].to(device),
                            max_new_tokens=settings.max_new_tokens,
                            do_sample=not settings.greedy,
                            eos_token_id=stop_token_ids(model, tokenizer),
                            pad_token_id=pad,
                            **extra,
                        )
                    width = enc["input_ids"].shape[1]
                    texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
                    for i, text in zip(rows, texts, strict=True):
                        out[i] = cut_at_stop(text, settings.stop)
        finally:
            if was_training:
                model.train()
        return [out[i] for i in range(len(prompts))]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end a completion, for every backend alike: the tokenizer's end of sequence and each one the
    model's generation config names (Qwen2.5-Instruct's: ``<|im_end|>`` and ``<|endoftext|>``; vLLM stops at the
    config's too, and transformers, given ``eos_token_id``, at those only)."""
    ids = [tokenizer.eos_token_id]
    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += config_ids if isinstance(config_ids, list | tuple) else [config_ids]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to and including the first stop string in it. transformers stops at the token that completes
    one and keeps that whole token (``stop_strings``); vLLM cuts inside it: cut here, so both backends agree."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


#: ``evaluate.backend`` → ``module:class``, imported only when a spec names it (vLLM is an optional extra).
BACKENDS: dict[str, str] = {
    "hf": "evaluators.generation:HFGenerator",
    "vllm": "evaluators.vllm_backend:VLLMGenerator",
}


def check_backend(spec: ExperimentSpec) -> None:
    """What validate can say about ``evaluate.backend`` offline, importing nothing heavy (one line)."""
    backend = spec.evaluate.backend
    if backend not in BACKENDS:
        raise GridrunError(f"evaluate.backend: unknown backend '{backend}'; known: {', '.join(sorted(BACKENDS))}")
    if backend != "vllm":
        return
    if "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None:
        raise GridrunError(
            "evaluate.backend: vllm is not installed here (pip install 'gridrun[vllm]'), or use backend: hf"
        )
    if spec.resources.gpu == 0:
        raise GridrunError("evaluate.backend: vllm generates on a GPU; set resources.gpu (a share or auto) or use hf")
    if spec.model.quantization == "int8":
        raise GridrunError(
            "evaluate.backend: vllm quantizes a base in flight to 4-bit only; use model.quantization nf4 or none"
        )


def build_generator(spec: ExperimentSpec) -> Generator:
    """The trial's generator for ``evaluate.backend`` (once per trial: vLLM loads its base model here)."""
    check_backend(spec)
    module, _, cls = BACKENDS[spec.evaluate.backend].partition(":")
    backend = getattr(importlib.import_module(module), cls)
    return backend() if backend is HFGenerator else backend.from_spec(spec)


_HF = HFGenerator()


def generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """Completions by the HF backend (:class:`HFGenerator`); what callers without a trial's generator use."""
    return _HF.generate(model, tokenizer, prompts, settings)
