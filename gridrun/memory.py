"""A trial's peak GPU memory, estimated from the model's config and the spec; the GPU share that holds it.

Pure arithmetic (no torch): ``gridrun validate`` refuses a ``resources.gpu`` fraction whose estimate does not fit,
``resources.gpu: auto`` picks the smallest fraction 1/k that holds the estimate with :data:`HEADROOM`, and every
trial reports the estimate next to its measured peak (``perf/mem_estimate_mb``, ``perf/peak_mem_mb``).

The estimate is a worst case: every micro-batch padded to ``data.max_seq_len``, the searched values that cost
the most (:func:`estimate_memory`). What each term counts, and why, is said where it is computed; the per-layer
activation count is checked tensor by tensor against what autograd saves (tests/gridrun_tests/test_memory.py).
It assumes the model classes of transformers' dense decoders (Llama, Qwen2, Mistral: q/k/v/o and gate/up/down
projections, RMSNorm, sdpa attention) and the trainable's own code: bitsandbytes nf4 with double quantization,
peft's ``prepare_model_for_kbit_training``, AdamW, and the evaluators' batch sizes.

What a trial itself needs lives here too, below the driver side: where a model's config is read from, the cap of
its allocator, and the line it fails with when it outgrows its share (``gridrun.packing`` is the driver's part).
The model's sizes come from :mod:`gridrun.model_shape`, the eval round's working set from :mod:`gridrun.eval_memory`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any

from gridrun.eval_memory import eval_bytes
from gridrun.losses import CHUNK
from gridrun.model_shape import ModelShape
from gridrun.precision import resolve_attn, resolve_dtype
from gridrun.spec import ExperimentSpec

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "HEADROOM",
    "Estimate",
    "GiB",
    "estimate_memory",
    "estimate_trial_memory",
    "extreme_specs",
    "gib",
    "loss_bytes",
]

GiB = 2**30
#: Outside torch's allocator, per process: the CUDA context, cuBLAS/cuDNN handles and loaded kernels (typically
#: 0.3-0.6 GiB with CUDA 12's lazy module loading; torch's ``max_memory_allocated`` never sees it).
CUDA_CONTEXT_BYTES = 512 * 2**20
#: ``gpu: auto`` wants a share of at least estimate x HEADROOM: the allocator's cache and fragmentation (reserved
#: exceeds allocated by 5-20% in long runs) and what the estimate leaves out (optimizer-step temporaries, kernels'
#: workspaces, prompts longer than data.max_seq_len).
HEADROOM = 1.2
#: Fractions ``gpu: auto`` chooses from: 1, 1/2, 1/3, ... 1/8 of a GPU.
MAX_TRIALS_PER_GPU = 8
#: Per nf4 tensor besides its codes and scales: the nf4 code table, the absmax offset, the nested fp32 code table.
_NF4_CONST = 64 + 4 + 1024


@dataclass(frozen=True)
class Estimate:
    """One trial's peak GPU memory in bytes, by term. ``allocated`` is what ``torch.cuda.max_memory_allocated``
    measures (``perf/peak_mem_mb``); ``total`` adds the CUDA context, and is what must fit in the GPU share."""

    weights: int  # quantized (or compute-dtype) decoder projections, with their quantization scales
    float_weights: int  # embeddings, lm_head, norms, biases: compute dtype, fp32 under nf4/int8 (peft)
    lora: int
    optimizer: int  # AdamW's exp_avg and exp_avg_sq
    grads: int
    activations: int  # what autograd keeps for backward over one micro-batch (layer inputs only, checkpointed)
    backward: int  # on top of that, the larger of the chunked loss (what it keeps, its run) and one layer's backward
    eval: int  # the eval round's largest working set
    eval_kind: str  # which eval step that is: generation, answer_loss, probe, mc, kl
    context: int = CUDA_CONTEXT_BYTES
    params: int = 0
    lora_params: int = 0

    @property
    def train(self) -> int:
        return self.grads + self.activations + self.backward

    @property
    def allocated(self) -> int:
        return self.weights + self.float_weights + self.lora + self.optimizer + max(self.train, self.eval)

    @property
    def total(self) -> int:
        return self.allocated + self.context

    def breakdown(self) -> str:
        """``weights 0.3, embeddings/norms 0.5, ...`` in GiB, the larger of training and eval round shown."""
        parts = [f"weights {gib(self.weights)}", f"embeddings/norms {gib(self.float_weights)}"]
        parts.append(f"LoRA+AdamW {gib(self.lora + self.optimizer)}")
        if self.train >= self.eval:
            parts += [f"grads {gib(self.grads)}", f"activations {gib(self.activations)}"]
            parts.append(f"loss/backward {gib(self.backward)}")
        else:
            parts.append(f"eval round {gib(self.eval)} ({self.eval_kind})")
        return ", ".join([*parts, f"CUDA context {gib(self.context)}"])


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def _weight_bytes(shape: ModelShape, quantization: str, compute_bytes: int, upcast: bool) -> tuple[int, int]:
    """(projections, float parameters) in bytes as loaded and prepared for training (``upcast``: by peft's k-bit
    preparation, which the trainable skips under bfloat16)."""
    tensors = [(i, o) for i, o in shape.linears().values()]
    if quantization == "nf4":
        per_layer = 0
        for i, o in tensors:
            n = i * o
            blocks = math.ceil(n / 64)
            per_layer += math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + _NF4_CONST
        linear = shape.layers * per_layer
    elif quantization == "int8":
        linear = shape.layers * sum(i * o + 4 * o for i, o in tensors)  # int8 codes + one fp32 scale per row
    else:
        return shape.linear_params() * compute_bytes, shape.float_params() * compute_bytes
    if not upcast:
        return linear, shape.float_params() * compute_bytes
    # prepare_model_for_kbit_training casts every fp16/bf16 parameter that is not 4-bit to fp32; a 4-bit
    # layer's bias goes back to the compute dtype at its first forward
    bias = shape.bias_params() if quantization == "nf4" else 0
    return linear, (shape.float_params() - bias) * 4 + bias * compute_bytes


def _layer_activation_bytes(
    shape: ModelShape, spec: ExperimentSpec, act: int, span: int, mask_bytes: int, attn: str, autocast: bool
) -> tuple[int, int]:
    """Bytes one decoder layer keeps for backward, per token, and how many fewer the first layer keeps (checked
    tensor by tensor against autograd's saved tensors in the tests).

    Args:
        act: the residual stream's dtype size: fp32 under nf4/int8 with peft's upcast (bitsandbytes casts each
            projection's output back to its input's dtype), else the compute dtype.
        span: the attention mask's row: the sequence, or a padding-free micro-batch's whole packed row.
        attn: the attention kernel (transformers' attn_implementation).
        autocast: 16-bit compute, whose autocast runs attention and every LoRA matmul in 16 bits.
    """
    low = 2 if autocast else act  # what attention and the adapters' matmuls keep
    h, i, nh = shape.hidden, shape.intermediate, shape.heads
    qd = nh * shape.head_dim
    lin = shape.linears()
    # RMSNorm upcasts its input to fp32 and keeps it and rsqrt; two per layer
    total = 2 * (4 * h + 4)
    if attn == "eager":  # q, k and v repeated to every head; softmax kept in fp32, and a copy in the compute dtype
        total += 3 * qd * low + nh * span * (4 + (low if low != 4 else 0))  # when not fp32: span^2 per head
    elif attn == "flash_attention_2":  # q, output, k and v at their own heads (GQA in the kernel), logsumexp;
        total += (2 * qd + 2 * shape.kv_heads * shape.head_dim) * low + 4 * nh  # no mask (varlen rows)
    else:  # sdpa: q, output, k and v repeated to every head (a mask rules out the GQA kernels), logsumexp, and
        total += 4 * qd * low + 4 * nh + span * low  # the padding or block-causal mask, made additive in q's dtype
    total += 3 * i * act  # gate, up and silu(gate): the inputs of the activation and of the product
    # the inputs of the projections that LoRA reads: normed (q/k/v), attention output (o, kept by sdpa and flash
    # already, not by eager), normed (gate/up), the MLP product (down)
    group = {"q_proj": "n1", "k_proj": "n1", "v_proj": "n1", "o_proj": "att", "gate_proj": "n2", "up_proj": "n2"}
    size = {"n1": h * act, "att": qd * act if attn == "eager" else 0, "n2": h * act, "down": i * act}
    shared: set[str] = set()
    if spec.model.quantization == "int8":  # bitsandbytes' int8 matmul keeps every projection's input
        shared = set(size)
    # the first layer's input needs no gradient (the embeddings are frozen): its first norm keeps nothing, and
    # the dropouts on that norm's output keep no mask
    first = 4 * h + 4
    for name in spec.lora.target_modules:
        if name not in lin:
            continue
        fan_in = lin[name][0]
        # lora_B's input: fp32 as peft keeps adapters, 16-bit under autocast
        total += spec.lora.r * (2 if autocast else 4)
        if spec.lora.dropout > 0:  # a dropped-out copy (fp32, or autocast's 16-bit cast), the mask (bool on CUDA)
            total += fan_in * ((2 if autocast else 4) + mask_bytes)
            first += fan_in * mask_bytes if group.get(name) == "n1" else 0
        elif autocast or act != 4:  # peft's cast of the input to fp32, and autocast's back: a copy per adapter
            total += fan_in * (2 if autocast else 4)
        else:
            shared.add(group.get(name, "down"))
    return total + sum(size[g] for g in shared), first


def loss_bytes(shape: ModelShape, tokens: int, scored: int, act: int) -> tuple[int, int]:
    """(kept for backward, working set while it runs) of the chunked training loss (gridrun.losses.causal_lm_loss)
    over a micro-batch of ``tokens`` positions, ``scored`` of them with a target.

    It keeps the gradient of the scored hidden rows and their indices (int64 pairs). While it runs: the final
    hidden states, the rows the head reads, the micro-batch's ids, mask and labels and the shifted targets, the
    scored targets (int64), and one chunk of the head's backward: log_softmax, the nll's gradient and
    log_softmax's, all fp32 (a bf16 head's own logits are freed once cast).
    """
    h = shape.hidden
    head = min(CHUNK, scored) * shape.vocab * 12
    return scored * (h * act + 16), tokens * (h * act + 32) + scored * (h * act + 8) + head


def estimate_trial_memory(config: Mapping[str, Any], spec: ExperimentSpec, device: str = "cuda") -> Estimate:
    """Peak GPU memory of one trial of ``spec`` (fixed values, nothing searched) on the model ``config``.

    Args:
        config: the model's Hugging Face config as a mapping (``config.json``, or ``PretrainedConfig.to_dict()``).
        device: ``cpu`` counts what the same trial keeps on CPU instead, where dropout keeps a float mask and
            ``train.padding_free: auto`` packs nothing (the tests compare that with measured tensors).
    """
    shape = ModelShape.from_config(config)
    q = spec.model.quantization
    dtype = resolve_dtype(spec.model, device)  # auto on a GPU: bfloat16 (every GPU of 40 GiB or more has it)
    compute = 4 if dtype == "float32" else 2
    upcast = q != "none" and dtype != "bfloat16"  # peft's k-bit preparation (trainables.model.add_lora)
    act = 4 if upcast else compute  # the residual stream, and the logits (lm_head is fp32 when upcast)
    weights, floats = _weight_bytes(shape, q, compute, upcast)
    n_lora = shape.lora_params(spec.lora.r, spec.lora.target_modules)
    b, seq = spec.train.batch_size, spec.data.max_seq_len
    tokens = b * seq  # every micro-batch as long as the longest example allowed (padded, or packed in one row)
    packed = spec.train.padding_free is True or (spec.train.padding_free == "auto" and device == "cuda")
    attn = resolve_attn(spec.model, device, dtype)  # the spec's kernel, passed to from_pretrained
    mask_bytes = 1 if device == "cuda" else 4  # dropout's mask: bool on CUDA, the input's float dtype on CPU
    autocast = dtype != "float32"
    layer, first = _layer_activation_bytes(shape, spec, act, tokens if packed else seq, mask_bytes, attn, autocast)
    h = shape.hidden
    fixed = 4 * h + 4  # the final norm: its fp32 input and rsqrt
    if spec.model.gradient_checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        saved, recompute = tokens * (shape.layers * h * act + fixed), tokens * layer
    else:
        saved, recompute = tokens * (shape.layers * layer - first + fixed), 0
    saved += 2 * (tokens if packed else seq) * shape.head_dim * act  # rotary cos and sin, shared by the layers
    # autocast's 16-bit copies of the adapters: its cache holds every one until the trainable's autocast block
    # ends, after the loss (which runs inside it); autograd keeps all but the first layer's q/k/v lora_A (no
    # input grad there) for backward too, without checkpointing
    cached = 2 * n_lora if autocast else 0
    if autocast and not spec.model.gradient_checkpointing:
        first_a = sum(spec.lora.r * h for t in ("q_proj", "k_proj", "v_proj") if t in spec.lora.target_modules)
        saved += 2 * (n_lora - first_a)
        cached = 2 * first_a
    # every position scored but each example's last (it predicts nothing): prompts masked, no padding at worst
    kept, loss = loss_bytes(shape, tokens, tokens - b, act)
    loss += cached
    if autocast and act == 4:  # float16 over peft's fp32 head: autocast's 16-bit copy of it, kept by each chunk
        loss += shape.vocab * h * 2
    # gradients through one layer: fp32 where they meet the norms' and peft's casts to fp32, whatever autocast does
    # (the loss's kept gradient is spent by then: the head's backward ran in its forward)
    layer_backward = recompute + tokens * (3 * shape.intermediate + 3 * h) * 4
    ev, kind = eval_bytes(shape, spec, act)
    return Estimate(
        weights=weights,
        float_weights=floats,
        lora=4 * n_lora,  # peft keeps adapters in fp32 (autocast_adapter_dtype)
        optimizer=8 * n_lora,  # AdamW: exp_avg and exp_avg_sq in the parameters' fp32
        grads=4 * n_lora,  # kept across micro-batches (gradient accumulation) until zero_grad
        activations=saved,
        backward=max(kept + loss, layer_backward),
        eval=ev,
        eval_kind=kind,
        params=shape.params(),
        lora_params=n_lora,
    )


#: Searched paths that change memory (``model.*`` and ``forgetting.*`` cannot be searched).
_MEMORY_PATHS = ("lora.", "train.batch_size", "data.max_seq_len", "evaluate.")


def extreme_specs(spec: ExperimentSpec) -> list[ExperimentSpec]:
    """``spec`` at every combination of the ends of each searched value that changes memory (LoRA rank and
    targets, batch size, sequence length, eval settings)."""
    from gridrun.spec.space import FixedValue

    dists = {p: d for p, d in spec.search.space.items() if p.startswith(_MEMORY_PATHS) or isinstance(d, FixedValue)}
    combos = product(*[[v for _, v in d.extremes()] for d in dists.values()])
    return [spec.with_params(dict(zip(dists, c, strict=True))) for c in combos]


def estimate_memory(config: Mapping[str, Any], spec: ExperimentSpec) -> Estimate:
    """The largest :func:`estimate_trial_memory` over the search space (:func:`extreme_specs`)."""
    return max((estimate_trial_memory(config, s) for s in extreme_specs(spec)), key=lambda e: e.total)
