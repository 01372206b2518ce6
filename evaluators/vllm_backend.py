"""``evaluate.backend: vllm``: the base model loaded once per trial in vLLM, each eval round's adapter a LoRA request.

The optional extra ``gridrun[vllm]``. The trial trains its peft model as always; when it generates, the adapter as
it stands (peft's ``save_pretrained``, to a temporary folder) is served to vLLM as a ``LoRARequest`` with a fresh
id, so vLLM never answers with an older round's adapter from its cache. The base model with the adapter disabled
(a trial's base scores), or a plain base model, is generated without one. Greedy decoding mirrors the HF
backend's settings (``max_new_tokens``, ``stop``, the tokenizer's end of sequence); prompts go in as the token ids
the HF backend gives the model (no added special tokens), so neither backend sees a second BOS.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.generation import GenerationSettings, Generator
from gridrun.builtin import resolve_model
from gridrun.errors import GridrunError

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["LORA_RANKS", "VLLMGenerator", "lora_rank_cap"]

#: The ranks vLLM's ``max_lora_rank`` accepts (its ``LoRAConfig.MaxLoRARanks``).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_cap(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds a LoRA of rank ``r`` (one line past its largest)."""
    for cap in LORA_RANKS:
        if r <= cap:
            return cap
    raise GridrunError(f"lora.r: vLLM serves LoRA ranks up to {LORA_RANKS[-1]}, got {r}; use evaluate.backend: hf")


def _adapter_state(model: Any) -> tuple[tuple[int, int], ...] | None:
    """Which adapter weights ``model`` generates with now, as (storage, in-place version) per LoRA tensor; None
    when it generates without one (not a peft model, or its adapter is disabled). torch bumps a tensor's version
    on every in-place write (optimizer steps, a checkpoint loaded into it): a changed tuple is a new adapter,
    known without hashing the weights."""
    if not hasattr(model, "peft_config"):
        return None
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")]
    if not layers or any(m.disable_adapters for m in layers):
        return None
    return tuple((p.data_ptr(), p._version) for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n)


class VLLMGenerator(Generator):
    """Completions by a vLLM engine holding the trial's base model (loaded at the first call, once per trial).

    Args:
        engine_args: keyword arguments of ``vllm.LLM`` (model, dtype, quantization, ``enable_lora``,
            ``max_lora_rank``, ``gpu_memory_utilization``, seed).
    """

    name = "vllm"

    def __init__(self, engine_args: dict[str, Any]) -> None:
        try:
            import vllm  # noqa: F401  # fail here, in one line, not at the first eval round
        except ImportError as e:
            raise GridrunError(
                f"evaluate.backend: vllm cannot be imported ({e}); pip install 'gridrun[vllm]' or use backend: hf"
            ) from None
        self.engine_args = engine_args
        self._llm: Any = None
        self._dir = Path(tempfile.mkdtemp(prefix="gridrun-vllm-lora-"))
        self._next_id = 1
        self._served: tuple[Any, Any] | None = None  # (adapter state, LoRARequest) of the adapter last saved

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> VLLMGenerator:
        """Engine arguments from the trial's spec: its model, dtype and quantization, its LoRA rank, and its GPU
        share as vLLM's memory fraction (``auto``, unresolved outside a launch: vLLM's default 0.9)."""
        m, gpu = spec.model, spec.resources.gpu
        args: dict[str, Any] = {
            "model": resolve_model(m.name),
            "tokenizer": resolve_model(m.name),
            "dtype": m.compute_dtype,
            "enable_lora": True,
            "max_lora_rank": lora_rank_cap(spec.lora.r),
            "max_loras": 1,
            "gpu_memory_utilization": 0.9 if gpu == "auto" else min(float(gpu), 1.0),
            "seed": spec.train.seed,
        }
        if m.revision:
            args["revision"] = m.revision
        if m.quantization == "nf4":
            args["quantization"] = "bitsandbytes"  # vLLM's in-flight 4-bit quantization of the same base
        elif m.quantization == "int8":
            raise GridrunError(
                "evaluate.backend: vllm quantizes a base in flight to 4-bit only; use model.quantization nf4 or none"
            )
        return cls(args)

    def _engine(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(**self.engine_args)
        return self._llm

    def _lora_request(self, model: Any) -> Any:
        """The request serving ``model``'s adapter as it stands (saved again only when its weights changed)."""
        from vllm.lora.request import LoRARequest

        state = _adapter_state(model)
        if state is None:
            return None
        if self._served is not None and self._served[0] == state:
            return self._served[1]
        lora_id, self._next_id = self._next_id, self._next_id + 1
        path = self._dir / f"adapter-{lora_id}"
        model.save_pretrained(str(path))
        if self._served is not None:  # vLLM has read the older adapter already; it will not be asked for again
            shutil.rmtree(self._served[1].lora_path, ignore_errors=True)
        request = LoRARequest(f"gridrun-{lora_id}", lora_id, str(path))
        self._served = (state, request)
        return request

    def generate(self, model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        lora = self._lora_request(model)
        params = SamplingParams(
            temperature=0.0 if settings.greedy else 1.0,
            max_tokens=settings.max_new_tokens,
            stop=list(settings.stop) or None,
            include_stop_str_in_output=True,  # the completion ends with it, as the HF backend's (cut_at_stop)
            stop_token_ids=[tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None,
            skip_special_tokens=True,
        )
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        outputs = self._engine().generate(
            [{"prompt_token_ids": i} for i in ids], params, lora_request=lora, use_tqdm=False
        )
        return [o.outputs[0].text for o in outputs]  # vLLM returns them in the prompts' order

    def close(self) -> None:
        self._llm = None  # vLLM shuts its engine down when the LLM object goes
        self._served = None
        shutil.rmtree(self._dir, ignore_errors=True)
