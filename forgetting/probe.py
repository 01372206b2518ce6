"""The probe: mean next-token loss on held-out general text, as a rise over the base model's (``forget/delta``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgetting._base import Measure, TaskPrompts, register_measure
from forgetting.baseline import fingerprint
from forgetting.data import load_probe_texts, probe_blocks
from gridrun.metrics import forget_delta

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["ProbeBase", "ProbeMeasure", "probe_loss"]


def probe_loss(model: Any, blocks: list[list[int]], batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy of ``model`` over equal-length token ``blocks`` (chunked LM head)."""
    import torch

    from gridrun.losses import nll_sum, scoring

    total, count = 0.0, 0
    with scoring(model) as device:
        for i in range(0, len(blocks), batch_size):
            ids = torch.tensor(blocks[i : i + batch_size], device=device)
            s, n = nll_sum(model, {"input_ids": ids}, ids)
            total, count = total + s, count + n
    return total / max(1, count)


@dataclass(frozen=True)
class ProbeBase:
    """The base model's probe loss."""

    loss: float


@register_measure("probe")
class ProbeMeasure(Measure):
    """``forget/probe_loss`` (and ``_base``) and ``forget/delta``, its relative rise over the base model's."""

    metric = "forget/delta"
    Base = ProbeBase

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        self.blocks: list[list[int]] = []

    @classmethod
    def enabled(cls, spec: ExperimentSpec) -> bool:
        return True  # always on: the default primary measure

    def base_key(self) -> dict[str, Any]:
        f = self.spec.forgetting
        return {
            "probe": fingerprint(f.probe),
            "probe_source": [f.probe_subset, f.probe_split, f.probe_revision],
            "probe_field": f.probe_field,
            "samples": f.samples,
            "seq_len": f.seq_len,
        }

    def setup(self, tokenizer: Any, task_prompts: TaskPrompts) -> None:
        f = self.spec.forgetting
        self.blocks = probe_blocks(tokenizer, load_probe_texts(f), f.seq_len, f.samples)

    def compute_base(self, model: Any, tokenizer: Any) -> ProbeBase:
        return ProbeBase(probe_loss(model, self.blocks))

    def score(self, model: Any, tokenizer: Any, base: ProbeBase) -> dict[str, float]:
        loss = probe_loss(model, self.blocks)
        return {
            "forget/probe_loss": loss,
            "forget/probe_loss_base": base.loss,
            self.metric: forget_delta(loss, base.loss),
        }
