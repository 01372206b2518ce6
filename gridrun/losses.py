"""Losses and log-likelihoods of a causal LM over chunks of positions, from its final hidden states.

Every scoring path (the probe, multiple-choice log-likelihoods, the answer loss, the KL measure) and the training
loss go through here. The backbone runs once and returns ``[batch, seq, hidden]``; the LM head then runs on
``chunk`` positions at a time, and only on the positions that are scored, so no ``[batch, seq, vocab]`` float32
tensor exists beyond one chunk's. In training the head's backward runs chunk by chunk inside the forward
(:func:`causal_lm_loss`), so the logits and their gradient are never held for the whole sequence either. Where
Liger's fused linear cross-entropy is installed (``gridrun[fused]``) and the trial runs on CUDA with a plain
``nn.Linear`` head, the training loss uses it instead.

Numbers equal the full-logits ones (``model(...).logits`` then ``log_softmax``/``cross_entropy`` in float32) to
float32 rounding: each position's logits are computed by the same module in the same dtype; only the order of
summation differs (tests/gridrun_tests/test_losses.py checks them, and the gradients, against that reference).

Written here rather than taken from a library because the maintained fused kernels (Liger, Cut Cross-Entropy)
need CUDA/Triton and a plain weight matrix: they cover neither the CPU trials, a peft-wrapped or quantized head,
per-token log-likelihoods, nor a KL between two forward passes of one model. torch is imported where it is used
(the package imports no torch at its top).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

__all__ = [
    "CHUNK",
    "IGNORE_INDEX",
    "KL_CHUNK",
    "causal_lm_loss",
    "forward_kl_sum",
    "hidden_states",
    "kl_head",
    "nll_sum",
    "scoring",
    "shift_targets",
    "target_logprobs",
]

#: Scored positions per chunk of the LM head: one chunk's float32 logits of a 152k vocabulary are 0.3 GiB.
CHUNK = 512
#: The KL's chunk: it holds two float64 log-softmaxes and three float64 temporaries, about five float32 chunks.
KL_CHUNK = CHUNK // 4
IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------ the model


def _inner(model: Any) -> Any:
    """The transformers model under a peft wrapper (its LoRA layers injected in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head(model: Any, float32: bool = False) -> tuple[Any, Any]:
    """(the LM head module, a function applying the model's post-processing of logits to the head's output).

    ``float32``: a plain ``nn.Linear`` head computes in float32 even where it would not (under a 16-bit autocast,
    or a 16-bit head): its input upcast, its weight upcast once (kept for the caller's chunks), autocast off for
    its matmul. Elsewhere (float32 already, or a head peft wraps) it is the head itself."""
    import torch

    inner = _inner(model)
    head = inner.get_output_embeddings()
    cfg = inner.config
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3
    scale = getattr(cfg, "logit_scale", None)  # Cohere
    upcast: list[Any] = []  # the head's float32 weight and bias, made at the first call that needs them

    def project(h: Any) -> Any:
        plain = float32 and type(head) is torch.nn.Linear
        if not plain or (
            h.dtype == head.weight.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)
        ):
            return head(h)
        if not upcast:
            upcast.extend([head.weight.float(), None if head.bias is None else head.bias.float()])
        with torch.autocast(h.device.type, enabled=False):
            return torch.nn.functional.linear(h.float(), *upcast)

    def logits(h: Any) -> Any:
        out = project(h)
        if scale is not None:
            out = out * scale
        if cap is not None:
            out = (out / cap).tanh() * cap
        return out

    return head, logits


@contextmanager
def scoring(model: Any) -> Iterator[Any]:
    """Eval mode (dropout off) and no gradient while scoring; yields the model's device; restores the mode."""
    import torch

    was_training = model.training
    if was_training:  # a switch walks every module (transformers re-kernelizes): none when already in eval mode
        model.eval()
    try:
        with torch.no_grad():
            yield next(p.device for p in model.parameters())
    finally:
        if was_training:
            model.train()


def hidden_states(model: Any, inputs: Mapping[str, Any]) -> Any:
    """The final (normed) hidden states ``[batch, seq, hidden]`` of ``model`` on ``inputs`` (``input_ids`` and
    ``attention_mask`` or ``position_ids``; ``labels`` is ignored), without the LM head and without a KV cache.

    Through a peft model the decoder is the base model's, with the adapter's layers in it (and switched off
    inside ``disable_adapter()``), so this is what ``model(...)`` feeds its head.
    """
    args = {k: v for k, v in inputs.items() if k != "labels"}
    return _inner(model).get_decoder()(**args, use_cache=False).last_hidden_state


def shift_targets(labels: Any) -> Any:
    """Labels aligned with the positions that predict them: position ``t`` is scored on ``labels[t + 1]``; the
    last position on nothing (as transformers' causal-LM loss shifts them)."""
    import torch

    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    for s in range(0, n, chunk):
        yield slice(s, min(n, s + chunk))


# ---------------------------------------------------------------------------------------------- no gradient


def target_logprobs(model: Any, inputs: Mapping[str, Any], targets: Any, chunk: int = CHUNK) -> Any:
    """log p(``targets[b, t]`` | the tokens up to ``t``) as float32 ``[batch, seq]``, 0 where a target is
    :data:`IGNORE_INDEX` (those positions never reach the head). No gradient; the model's mode is the caller's."""
    import torch

    with torch.no_grad():
        hidden = hidden_states(model, inputs)
        _, logits = _head(model)
        where = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        rows, tgt = hidden[where], targets[where]
        out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
        picked = torch.empty(len(tgt), dtype=torch.float32, device=hidden.device)
        for s in _chunks(len(tgt), chunk):
            lp = torch.log_softmax(logits(rows[s]).float(), -1)
            picked[s] = lp.gather(-1, tgt[s, None])[:, 0]
            del lp
        out[where] = picked
    return out


def nll_sum(model: Any, inputs: Mapping[str, Any], labels: Any, chunk: int = CHUNK) -> tuple[float, int]:
    """(summed next-token negative log-likelihood, scored tokens) of ``labels`` (unshifted, as the model's
    ``labels``: -100 is not scored)."""
    targets = shift_targets(labels)
    return -float(target_logprobs(model, inputs, targets, chunk).double().sum()), int((targets != IGNORE_INDEX).sum())


def kl_head(model: Any) -> tuple[Any, Any]:
    """The LM head as the KL computes with it: in float32 under a 16-bit autocast too, since 16-bit logits round
    each by up to 2^-9 of its size (0.03 at a logit of 16), a positive floor under the KL far above a lightly
    trained adapter's. Made once per measure: a 16-bit head's float32 weight is made at its first use and kept."""
    return _head(model, float32=True)


def forward_kl_sum(
    model: Any, inputs: Mapping[str, Any], mask: Any, chunk: int = KL_CHUNK, head: tuple[Any, Any] | None = None
) -> float:
    """Σ over positions where ``mask`` is set of KL(base ‖ tuned) between the next-token distributions of
    ``model`` with its peft adapter switched off (base) and on (tuned); ``head``: :func:`kl_head`'s, made once by a
    caller that sums over many batches."""
    import torch

    where = mask.bool().nonzero(as_tuple=True)
    with torch.no_grad():
        with model.disable_adapter():
            base = hidden_states(model, inputs)[where]
        tuned = hidden_states(model, inputs)[where]
        head, logits = head or kl_head(model)
        # the head's own adapter off too, where LoRA targets lm_head; a plain Linear head has none, and switching
        # the adapter off walks the whole model, so it is done per chunk only where the head has one
        off = nullcontext if type(head) is torch.nn.Linear else model.disable_adapter
        total = torch.zeros((), dtype=torch.float64, device=tuned.device)
        for s in _chunks(len(tuned), chunk):
            # float64: in float32, log-probabilities carry ~1e-6 of rounding each, as large as the KL of a barely
            # trained adapter; a chunk at a time keeps the cost of the wider type small
            with off():
                lp = torch.log_softmax(logits(base[s]).double(), -1)
            lq = torch.log_softmax(logits(tuned[s]).double(), -1)
            total += (lp.exp() * (lp - lq)).sum()
            del lp, lq
    return float(total)


# ---------------------------------------------------------------------------------------------- training


def _same(t: Any) -> Any:
    return t


@functools.cache
def _chunked_ce() -> Any:
    """The autograd Function of :func:`causal_lm_loss`'s torch path (made on first use: torch is imported late)."""
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Σ cross-entropy of ``logits(rows)`` against ``targets``, a chunk at a time; each chunk's backward (to
        the rows and to the head's trainable parameters) runs right after its forward, so a chunk's logits and
        their gradient are freed before the next chunk's exist, and backward only scales what was kept."""

        @staticmethod
        def forward(ctx: Any, rows: Any, targets: Any, logits: Any, chunk: int, *params: Any) -> Any:
            grad_rows = torch.empty_like(rows) if rows.requires_grad else None
            grad_params = [torch.zeros_like(p) for p in params]
            total = torch.zeros((), dtype=torch.float32, device=rows.device)
            # the chunk's graph lives only inside this loop: an outer saved-tensor hook (offloading, a memory
            # probe) must not see what it saves, so identity hooks stand innermost while it exists
            for s in _chunks(len(rows), chunk):
                with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_same, _same):
                    x = rows[s].detach().requires_grad_(grad_rows is not None)
                    loss = torch.nn.functional.cross_entropy(logits(x).float(), targets[s], reduction="sum")
                    wrt = [x] if grad_rows is not None else []
                    grads = torch.autograd.grad(loss, [*wrt, *params]) if wrt or params else ()
                if grad_rows is not None:
                    grad_rows[s] = grads[0]
                for acc, g in zip(grad_params, grads[len(wrt) :], strict=True):
                    acc += g
                total += loss.detach()
                del loss, grads
            ctx.save_for_backward(*([grad_rows] if grad_rows is not None else []), *grad_params)
            ctx.has_rows = grad_rows is not None
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            saved = list(ctx.saved_tensors)
            g_rows = saved.pop(0) * grad_out if ctx.has_rows else None
            return (g_rows, None, None, None, *[g * grad_out for g in saved])

    return ChunkedLinearCrossEntropy


def _fused(head: Any, device: Any) -> Any:
    """Liger's fused linear cross-entropy (sum), where it applies: CUDA, installed, a plain ``nn.Linear`` head
    whose logits the model does not post-process; else None."""
    import torch

    if device.type != "cuda" or type(head) is not torch.nn.Linear:
        return None
    return _liger_loss()


@functools.cache
def _liger_loss() -> Any:
    """Liger's loss module, made once per process (every micro-batch asks), or None where Liger is not installed."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def causal_lm_loss(model: Any, batch: Mapping[str, Any], chunk: int = CHUNK) -> Any:
    """The mean next-token cross-entropy over ``batch["labels"]`` that are not -100, with its gradient: what
    ``model(**batch).loss`` is (transformers' causal-LM loss, float32), without full-sequence logits.

    Only the scored positions reach the head (prompt tokens masked by -100 cost nothing there). Returns a scalar
    tensor; ``.backward()`` reaches the LoRA weights in the decoder and, if any, in the head.
    """
    labels = batch["labels"]
    hidden = hidden_states(model, batch)
    targets = shift_targets(labels).to(hidden.device)
    where = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    rows, tgt = hidden[where], targets[where]
    head, logits = _head(model)
    fused = _fused(head, rows.device) if _plain_logits(_inner(model).config) else None
    if fused is not None:
        total = fused(head.weight, rows.to(head.weight.dtype), tgt, head.bias)
        total = getattr(total, "loss", total[0] if isinstance(total, tuple) else total)  # newer versions: an output
    else:
        params = [p for p in head.parameters() if p.requires_grad]
        total = _chunked_ce().apply(rows, tgt, logits, chunk, *params)
    return total / len(tgt)


def _plain_logits(config: Any) -> bool:
    return getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None
