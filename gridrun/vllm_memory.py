"""The vLLM engine's GPU memory in a trial (``evaluate.backend: vllm``): its own copy of the base, its KV cache,
LoRA slots and working memory, the fraction of the GPU it is given and the context length it is sized for.

vLLM's ``gpu_memory_utilization`` is the fraction of the whole GPU one engine may use (weights, KV cache,
activations, CUDA graphs); at startup vLLM refuses to run where the GPU's free memory is below utilization x total
(``request_memory``, vllm/v1/worker/utils.py), and it then gives the KV cache all that the fraction leaves after
its profiled weights, activations and CUDA graphs (``determine_available_memory``, vllm/v1/worker/gpu_worker.py).
So the engine gets its own part only, estimated here (the trial's model is already on the GPU when it starts),
and a trial's share of the GPU holds its training estimate (:mod:`gridrun.memory`) plus this part
(:mod:`gridrun.packing`). Written by hand: vLLM has no estimate short of starting an engine on a GPU.

Pure arithmetic, no torch and no vLLM: the driver plans shares with it, the trial sizes its engine with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridrun.errors import GridrunError
from gridrun.eval_memory import generation_budgets
from gridrun.memory import CUDA_CONTEXT_BYTES, GiB, extreme_specs, gib
from gridrun.model_shape import ModelShape
from gridrun.precision import resolve_dtype
from gridrun.spec import ExperimentSpec

__all__ = [
    "BLOCK_TOKENS",
    "CUDA_GRAPH_BYTES",
    "LORA_RANKS",
    "EngineEstimate",
    "engine_max_model_len",
    "estimate_engine",
    "estimate_engine_memory",
    "lora_rank_cap",
]

#: The ranks vLLM's ``max_lora_rank`` accepts (its ``LoRAConfig.MaxLoRARanks``).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: vLLM's default KV cache block (tokens): a sequence's cache is a whole number of blocks.
BLOCK_TOKENS = 16
#: CUDA graphs, which vLLM captures after profiling: "CUDA graphs can take additional 1~3 GiB memory per GPU" (its
#: own log line; recent versions deduct their estimate from the KV cache inside the fraction); the low end, since
#: the graphs captured stop at ``max_num_seqs``, here the eval batch. It also covers what vLLM's profiling counts
#: outside torch's allocator (cuBLAS workspaces, its process group), which this estimate has no term for.
CUDA_GRAPH_BYTES = 1 * GiB
#: LoRA slots on the GPU: one adapter at a time (each eval round's, or none for base scores).
MAX_LORAS = 1
#: Every projection vLLM wraps for LoRA (its packed qkv_proj, o_proj, gate_up_proj, down_proj): it allocates a slot
#: for each at ``max_lora_rank``, whatever the adapter targets.
_LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_rank_cap(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds a LoRA of rank ``r`` (one line past its largest)."""
    for cap in LORA_RANKS:
        if r <= cap:
            return cap
    raise GridrunError(f"lora.r: vLLM serves LoRA ranks up to {LORA_RANKS[-1]}, got {r}; use evaluate.backend: hf")


@dataclass(frozen=True)
class EngineEstimate:
    """One trial's vLLM engine in bytes, by term, and the engine arguments they were computed for. ``requested`` is
    what ``gpu_memory_utilization`` asks vLLM for; ``total`` adds the engine process's CUDA context (vLLM takes its
    snapshot of free memory after creating it), and is what the trial's share must hold beside its training."""

    weights: int  # the decoder projections as vLLM loads them (16-bit, or in-flight 4-bit bitsandbytes for nf4)
    float_weights: int  # embeddings, lm_head (once if tied), norms, biases: never quantized, in the dtype
    kv_cache: int  # max_num_seqs sequences of max_model_len tokens, whole blocks
    lora: int  # the LoRA slots at max_lora_rank
    activations: int  # vLLM's profiling run: a max_num_batched_tokens forward, and the sampler over max_num_seqs
    graphs: int  # CUDA graphs
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    context: int = CUDA_CONTEXT_BYTES

    @property
    def requested(self) -> int:
        return self.weights + self.float_weights + self.kv_cache + self.lora + self.activations + self.graphs

    @property
    def total(self) -> int:
        return self.requested + self.context

    def utilization(self, gpu_bytes: int) -> float:
        """``gpu_memory_utilization`` for a GPU of ``gpu_bytes``: the requested part, rounded up (vLLM requests
        ceil(total x utilization), so the KV cache gets no less than planned)."""
        return math.ceil(self.requested / gpu_bytes * 10_000) / 10_000

    def breakdown(self) -> str:
        """``weights 3.1, embeddings/norms 1.0, ...`` in GiB."""
        return (
            f"weights {gib(self.weights)}, embeddings/norms {gib(self.float_weights)}, KV cache {gib(self.kv_cache)} "
            f"({self.max_num_seqs} x {self.max_model_len} tokens), LoRA slots {gib(self.lora)}, "
            f"activations {gib(self.activations)}, CUDA graphs {gib(self.graphs)}, CUDA context {gib(self.context)}"
        )

    def engine_args(self, gpu_bytes: int) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments this estimate was computed for, on a GPU of ``gpu_bytes``."""
        return {
            "gpu_memory_utilization": self.utilization(gpu_bytes),
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
        }


def _context_length(config: Mapping[str, Any]) -> int | None:
    config = config.get("text_config") or config
    n = config.get("max_position_embeddings")
    return n if isinstance(n, int) and n > 0 else None


def engine_max_model_len(config: Mapping[str, Any], spec: ExperimentSpec, tokens: int | None = None) -> int:
    """The context vLLM is sized for: ``tokens`` (the longest prompt plus its generation budget, as the trial knows
    them), else ``data.max_seq_len`` plus the largest generation budget of an eval round (the task's
    ``evaluate.max_new_tokens``, the judge's answers': :func:`gridrun.eval_memory.generation_budgets`; prompts
    assumed no longer than training examples, as the HF estimate assumes); never past the model's own context
    (``max_position_embeddings``)."""
    budget = max(generation_budgets(spec).values(), default=spec.evaluate.max_new_tokens)
    want = tokens if tokens is not None else spec.data.max_seq_len + budget
    limit = _context_length(config)
    return min(want, limit) if limit else want


def _weight_bytes(shape: ModelShape, quantization: str, dtype_bytes: int) -> tuple[int, int]:
    """(projections, float parameters) as vLLM holds them."""
    if quantization != "nf4":
        return shape.linear_params() * dtype_bytes, shape.float_params() * dtype_bytes
    # vLLM's in-flight bitsandbytes (quantize_4bit, nf4, blocks of 64, per checkpoint tensor) undoes the double
    # quantization at load (dequantize_dq): two codes a byte, an fp32 absmax per block, the fp32 16-entry code table
    per_layer = sum(math.ceil(i * o / 2) + 4 * math.ceil(i * o / 64) + 64 for i, o in shape.linears().values())
    return shape.layers * per_layer, shape.float_params() * dtype_bytes


def estimate_engine(config: Mapping[str, Any], spec: ExperimentSpec, tokens: int | None = None) -> EngineEstimate:
    """The vLLM engine of one trial of ``spec`` (fixed values) on the model ``config``.

    Args:
        tokens: the longest prompt plus its generation budget, where the trial knows its prompts (see
            :func:`engine_max_model_len`).
    """
    shape = ModelShape.from_config(config)
    dtype_bytes = 4 if resolve_dtype(spec.model, "cuda") == "float32" else 2  # bfloat16 and float16 alike
    weights, floats = _weight_bytes(shape, spec.model.quantization, dtype_bytes)
    seqs, length = spec.evaluate.batch_size, engine_max_model_len(config, spec, tokens)
    batched = max(length, seqs)  # one whole prompt per step at least; vLLM wants no fewer than max_num_seqs
    per_token = shape.layers * 2 * shape.kv_heads * shape.head_dim * dtype_bytes  # K and V, every layer
    kv = seqs * math.ceil(length / BLOCK_TOKENS) * BLOCK_TOKENS * per_token
    rank = lora_rank_cap(spec.lora.r)
    lora = MAX_LORAS * shape.lora_params(rank, _LORA_MODULES) * dtype_bytes
    h, i = shape.hidden, shape.intermediate
    # the profiling forward: one layer's working set over the batched tokens (the MLP's gate/up and activation,
    # hidden states, q/k/v; as memory's eval forward), the LoRA kernels' fp32 shrink outputs (3 slices of qkv), a
    # 4-bit fused gate_up weight dequantized by bitsandbytes for its matmul; then the sampler over max_num_seqs rows:
    # logits in the dtype, their fp32 copy and the probabilities
    forward = batched * ((4 * i + 6 * h) * dtype_bytes + 3 * rank * 4)
    if spec.model.quantization == "nf4":
        forward += 2 * i * h * dtype_bytes
    sampler = seqs * shape.vocab * (dtype_bytes + 8)
    return EngineEstimate(
        weights=weights,
        float_weights=floats,
        kv_cache=kv,
        lora=lora,
        activations=forward + sampler,
        graphs=CUDA_GRAPH_BYTES,
        max_model_len=length,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
    )


def estimate_engine_memory(config: Mapping[str, Any], spec: ExperimentSpec) -> EngineEstimate | None:
    """The largest :func:`estimate_engine` over the search space (the ends of each searched value that changes
    memory), as the driver plans a share; None unless ``evaluate.backend`` is vllm."""
    if spec.evaluate.backend != "vllm":
        return None
    return max((estimate_engine(config, s) for s in extreme_specs(spec)), key=lambda e: e.total)
