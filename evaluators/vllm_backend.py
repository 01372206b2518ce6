"""``evaluate.backend: vllm``: the base model loaded once per trial in vLLM, each eval round's adapter a LoRA request.

The optional extra ``gridrun[vllm]``. The trial trains its peft model as always; when it generates, the adapter as
it stands (peft's ``save_pretrained``, to a temporary folder) is served to vLLM as a ``LoRARequest`` with a fresh
id, so vLLM never answers with an older round's adapter from its cache. The base model with the adapter disabled
(a trial's base scores), or a plain base model, is generated without one. Greedy decoding mirrors the HF
backend's settings (``max_new_tokens``, ``stop``, the tokenizer's end of sequence); prompts go in as the token ids
the HF backend gives the model (no added special tokens), so neither backend sees a second BOS.

The engine starts beside the trial's own model, on the same GPU: it gets its own part of the trial's share
(``gpu_memory_utilization`` = its estimate / the GPU's memory, :mod:`gridrun.vllm_memory`), never the whole share,
and a context (``max_model_len``) as long as the longest prompt it was told of plus its generation budget.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.generation import GenerationSettings, Generator, stop_token_ids
from gridrun.builtin import resolve_model
from gridrun.errors import GridrunError
from gridrun.memory import gib
from gridrun.precision import bf16_supported, resolve_dtype
from gridrun.vllm_memory import LORA_RANKS, EngineEstimate, estimate_engine, lora_rank_cap

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["LORA_RANKS", "VLLMGenerator", "lora_rank_cap"]

logger = logging.getLogger(__name__)


def _gpu_bytes() -> int:
    """The GPU's memory, as vLLM reads it (the whole device: its fraction is of this)."""
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def _gpu_id() -> str:
    """This trial's GPU, the same name in every process of the node (Ray maps the trial's GPU to device 0)."""
    import torch

    if not torch.cuda.is_available():
        return "none"
    return str(getattr(torch.cuda.get_device_properties(0), "uuid", "0"))


@contextmanager
def _engine_start(gpu: str) -> Iterator[None]:
    """One vLLM engine starting at a time per GPU, across the trials packed on it. vLLM sizes its KV cache from
    the GPU's free memory before and after its profiling run: a neighbour's engine starting (or memory freed) in
    between is counted against it (its cache shrinks, or the start fails with no memory left for cache blocks).
    Trials packed on one GPU reach their first eval round together, so their engines would start together.
    The cached blocks this process's torch freed count as used in vLLM's check: they are given back first."""
    import torch
    from filelock import FileLock

    with FileLock(str(Path(tempfile.gettempdir()) / f"gridrun-vllm-start-{gpu}.lock")):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        yield


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
            ``max_lora_rank``, seed); with ``spec``, the memory ones (``gpu_memory_utilization``,
            ``max_model_len``, ``max_num_seqs``, ``max_num_batched_tokens``) are added when the engine starts.
        spec: the trial's spec, which sizes the engine (:mod:`gridrun.vllm_memory`).
    """

    name = "vllm"

    def __init__(self, engine_args: dict[str, Any], spec: ExperimentSpec | None = None) -> None:
        try:
            import vllm  # noqa: F401  # fail here, in one line, not at the first eval round
        except ImportError as e:
            raise GridrunError(
                f"evaluate.backend: vllm cannot be imported ({e}); pip install 'gridrun[vllm]' or use backend: hf"
            ) from None
        self.engine_args = engine_args
        self.spec = spec
        self.estimate: EngineEstimate | None = None  # the engine's, once it started
        self._tokens: int | None = None  # the longest prompt plus its generation budget, as reserved so far
        self._llm: Any = None
        self._dir = Path(tempfile.mkdtemp(prefix="gridrun-vllm-lora-"))
        self._next_id = 1
        self._served: tuple[Any, Any] | None = None  # (adapter state, LoRARequest) of the adapter last saved

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> VLLMGenerator:
        """Engine arguments from the trial's spec: its model, dtype and quantization, its LoRA rank; the memory
        ones follow when the engine starts (its own part of the GPU and its context, see :meth:`memory_args`).

        The dtype is the one the trial computes in on this GPU (``compute_dtype: auto`` resolved by gridrun's rule:
        bfloat16 where the GPU has it, else float16), never vLLM's own ``auto``, which follows the checkpoint's
        config (a bfloat16 checkpoint on a GPU without bfloat16, a float32 one as float16)."""
        m = spec.model
        args: dict[str, Any] = {
            "model": resolve_model(m.name),
            "tokenizer": resolve_model(m.name),
            "dtype": resolve_dtype(m, "cuda", bf16_supported("cuda")),  # vLLM generates on the GPU only
            "enable_lora": True,
            "max_lora_rank": lora_rank_cap(spec.lora.r),
            "max_loras": 1,
            "seed": spec.train.seed,
        }
        if m.revision:  # the tokenizer's too: vLLM reads it from the default branch otherwise
            args["revision"] = args["tokenizer_revision"] = m.revision
        if m.quantization == "nf4":
            args["quantization"] = "bitsandbytes"  # vLLM's in-flight 4-bit quantization of the same base
        elif m.quantization == "int8":
            raise GridrunError(
                "evaluate.backend: vllm quantizes a base in flight to 4-bit only; use model.quantization nf4 or none"
            )
        return cls(args, spec)

    def reserve(self, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> None:
        """Size the engine (once it starts) for these prompts too: its context holds the longest plus
        ``max_new_tokens``."""
        if prompts:
            longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            self._reserve(longest + max_new_tokens)

    def _reserve(self, tokens: int) -> None:
        if self._llm is not None and tokens > self.engine_args.get("max_model_len", tokens):
            logger.warning(
                "vLLM engine: %d tokens asked of a context of %d (sized at its start): a longer prompt fails there",
                tokens,
                self.engine_args["max_model_len"],
            )
        self._tokens = max(self._tokens or 0, tokens)

    def memory_args(self, config: dict[str, Any], gpu_bytes: int) -> dict[str, Any]:
        """The engine's memory arguments on a GPU of ``gpu_bytes`` for the model ``config``: its estimated part
        only as ``gpu_memory_utilization`` (the trial's model already holds the rest of its share, and vLLM refuses
        to start with less free memory than its fraction), ``max_model_len`` from the reserved prompts (capped at
        the model's context), the eval batch as ``max_num_seqs``. One line where the whole GPU cannot hold it."""
        assert self.spec is not None
        est = estimate_engine(config, self.spec, self._tokens)
        if est.total > gpu_bytes:
            raise GridrunError(
                f"evaluate.backend: vllm — the engine needs about {gib(est.total)} GiB ({est.breakdown()}), more "
                f"than the whole {gib(gpu_bytes)} GiB GPU; lower evaluate.batch_size or use backend: hf"
            )
        planned = estimate_engine(config, self.spec)  # what the trial's share was planned with
        if est.total > planned.total:
            logger.warning(
                "vLLM engine: its prompts (up to %d tokens with their answers) are longer than the %d the trial's GPU "
                "share was planned for (data.max_seq_len + the largest generation budget): it takes %s GiB, not %s",
                est.max_model_len,
                planned.max_model_len,
                gib(est.total),
                gib(planned.total),
            )
        self.estimate = est
        return est.engine_args(gpu_bytes)

    def _engine(self, model: Any = None) -> Any:
        if self._llm is None:
            from vllm import LLM

            if self.spec is not None:
                self.engine_args.update(self.memory_args(_model_config(self.spec, model), _gpu_bytes()))
                assert self.estimate is not None
                logger.info(
                    "vLLM engine: about %s GiB (%s): gpu_memory_utilization %s, max_model_len %d",
                    gib(self.estimate.total),
                    self.estimate.breakdown(),
                    self.engine_args["gpu_memory_utilization"],
                    self.engine_args["max_model_len"],
                )
            with _engine_start(_gpu_id()):
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
            stop_token_ids=stop_token_ids(model, tokenizer) or None,  # the HF backend's, for the same completions
            skip_special_tokens=True,
        )
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self._reserve(max(len(i) for i in ids) + settings.max_new_tokens)
        outputs = self._engine(model).generate(
            [{"prompt_token_ids": i} for i in ids], params, lora_request=lora, use_tqdm=False
        )
        return [o.outputs[0].text for o in outputs]  # vLLM returns them in the prompts' order

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back, remove the adapters' folder; never raises, and a
        second call does nothing (a trial's ``finally`` and an error path may both call it).

        Inside a process that goes on (a Tune worker that runs the next trial, ``reuse_actors``), following vLLM:
        its maintainers' answer for freeing an ``LLM`` in-process (vllm-project/vllm#6544, after vLLM's own test
        teardown ``cleanup_dist_env_and_memory``: ``destroy_model_parallel``, ``destroy_distributed_environment``,
        ``gc.collect``, ``torch.cuda.empty_cache``), after an explicit engine shutdown, since dropping the last
        reference alone does not free the memory (vllm-project/vllm#21073). Ray is left running (the trial runs in
        it): ``shutdown_ray`` stays False.
        """
        llm, self._llm = self._llm, None
        self._served = None
        shutil.rmtree(self._dir, ignore_errors=True)
        if llm is None:
            return
        _attempt("engine shutdown", _shutdown, llm)
        del llm  # the engine's last reference: the cleanup's collection frees it
        _attempt("memory cleanup", _free_memory)


def _model_config(spec: ExperimentSpec, model: Any) -> dict[str, Any]:
    """The config of the model generated for (a peft model's is its base's), else the spec's model's."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    from gridrun.model_config import model_config

    found = model_config(spec)
    if found is None:
        raise GridrunError(f"evaluate.backend: vllm cannot read the config of {spec.model.name} to size its engine")
    return found


def _attempt(what: str, step: Any, *args: Any) -> None:
    try:
        step(*args)
    except Exception as e:  # a failed step must not fail the trial's end, nor skip the steps after it
        logger.warning("vLLM engine release: %s failed: %s", what, e)


def _shutdown(llm: Any) -> None:
    """``LLM.shutdown()`` where the installed vLLM has one (as proposed in vllm-project/vllm#36283 and #46023), else
    the V1 engine core client's ``shutdown()`` (what its finalizer runs, vllm-project/vllm#11659: it stops the
    engine-core process)."""
    shutdown = getattr(llm, "shutdown", None)
    if shutdown is None:
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()


def _free_memory() -> None:
    """vLLM's own teardown of its distributed state and cached memory (``shutdown_ray=False``: the trial runs in
    Ray); where a version lacks it, its steps that matter here."""
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        import torch

        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return
    cleanup_dist_env_and_memory(shutdown_ray=False)
