"""Multiple-choice log-likelihood accuracy, computed as lm-evaluation-harness computes it.

Each choice is a request ``(context, continuation)``; its score is the summed log-probability of the
continuation's tokens after the context. As in the harness, the pair is encoded whole and split at the context's
token count (trailing spaces of the context move to the continuation first), so a word keeps the tokens it has in
running text. ``acc`` picks the highest sum; ``acc_norm`` the highest sum per character of the choice. Used by
the forgetting measure (``forget/mc_*``), not as a task evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgetting._base import Measure, TaskPrompts, register_measure
from forgetting.baseline import fingerprint
from forgetting.data import McSet, load_mc_sets

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["McBase", "McMeasure", "encode_pair", "loglikelihoods", "mc_accuracy"]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it (an empty context is the EOS token, as the
    harness conditions on its prefix token)."""
    if not context:
        return [tokenizer.eos_token_id], tokenizer.encode(continuation, add_special_tokens=False)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def loglikelihoods(model: Any, tokenizer: Any, requests: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """Summed log-probability of each request's continuation given its context (right-padded batches, longest
    first; a causal model's real positions do not see the padding after them)."""
    import torch

    from gridrun.losses import IGNORE_INDEX, scoring, target_logprobs

    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = [0.0] * len(encoded)
    with scoring(model) as device:
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            seqs = [(encoded[i][0] + encoded[i][1])[:-1] for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for k, i in enumerate(chunk):
                ctx, cont = encoded[i]
                ids[k, : len(seqs[k])] = torch.tensor(seqs[k])
                start = len(ctx) - 1  # the position whose next-token distribution scores cont[0]
                targets[k, start : start + len(cont)] = torch.tensor(cont)
            # only the continuations' positions reach the LM head
            logp = target_logprobs(model, {"input_ids": ids.to(device)}, targets.to(device))
            for k, i in enumerate(chunk):
                out[i] = float(logp[k].sum())
    return out


def mc_accuracy(model: Any, tokenizer: Any, items: list[dict[str, Any]], metric: str = "acc_norm") -> float:
    """Share of ``items`` answered right. Each item: ``contexts``, ``continuations`` (one per choice),
    ``lengths`` (each choice's characters, for ``acc_norm``) and ``answer`` (the gold index)."""
    if metric not in ("acc", "acc_norm"):
        raise ValueError(f"metric must be acc or acc_norm, got {metric!r}")
    requests = [(c, x) for it in items for c, x in zip(it["contexts"], it["continuations"], strict=True)]
    lls = loglikelihoods(model, tokenizer, requests)
    right, pos = 0, 0
    for it in items:
        n = len(it["continuations"])
        scores = lls[pos : pos + n]
        pos += n
        if metric == "acc_norm":
            scores = [s / max(1, length) for s, length in zip(scores, it["lengths"], strict=True)]
        right += int(max(range(n), key=lambda j: scores[j]) == int(it["answer"]))
    return right / max(1, len(items))


@dataclass(frozen=True)
class McBase:
    """The base model's accuracy on each benchmark (benchmark name → accuracy)."""

    accuracy: dict[str, float]


@register_measure("mc")
class McMeasure(Measure):
    """``forget/mc_<benchmark>`` (and ``_base``) each, ``forget/mc_accuracy`` their mean (and ``_base``), and
    ``forget/mc_delta``, the mean's relative drop from the base model's (as ``forget/delta`` is the probe's rise)."""

    metric = "forget/mc_delta"
    Base = McBase

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        self.sets: list[McSet] = []

    @classmethod
    def enabled(cls, spec: ExperimentSpec) -> bool:
        return bool(spec.forgetting.mc)

    def base_key(self) -> dict[str, Any]:
        return {
            "mc": [
                {**m.model_dump(mode="json"), "source": fingerprint(m.source or "")} for m in self.spec.forgetting.mc
            ]
        }

    def setup(self, tokenizer: Any, task_prompts: TaskPrompts) -> None:
        self.sets = load_mc_sets(self.spec.forgetting.mc)

    def compute_base(self, model: Any, tokenizer: Any) -> McBase:
        return McBase({s.name: mc_accuracy(model, tokenizer, s.items, s.metric) for s in self.sets})

    def score(self, model: Any, tokenizer: Any, base: McBase) -> dict[str, float]:
        from gridrun.errors import GridrunError

        missing = [s.name for s in self.sets if s.name not in base.accuracy]
        if missing:
            raise GridrunError(f"forgetting.mc: no cached base-model accuracy for {', '.join(missing)} was passed")
        out: dict[str, float] = {}
        for s in self.sets:
            out[f"forget/mc_{s.name}"] = mc_accuracy(model, tokenizer, s.items, s.metric)
            out[f"forget/mc_{s.name}_base"] = base.accuracy[s.name]
        acc = sum(out[f"forget/mc_{s.name}"] for s in self.sets) / len(self.sets)
        acc0 = sum(base.accuracy[s.name] for s in self.sets) / len(self.sets)
        out["forget/mc_accuracy"] = acc  # the mean over benchmarks
        out["forget/mc_accuracy_base"] = acc0
        out[self.metric] = (acc0 - acc) / acc0 if acc0 > 0 else 0.0  # relative drop, as forget/delta
        return out
