"""``kl``: mean per-token forward KL(base ‖ tuned) of next-token distributions, on the task's own eval prompts
(``forget/kl_task``, the setting of arXiv 2509.04259, where it predicts forgetting) and on the probe text
(``forget/kl_probe``, general ability).

The base distributions come from the same model with its adapter switched off (peft's ``disable_adapter``), so
no second model is loaded and an untrained adapter (LoRA's B is zero) gives exactly 0. The KL is summed over
position chunks: each chunk's log-softmax (float64) is made for both models and dropped before the next, so no
full ``[batch, seq, vocab]`` float copy of the logits is held twice. Written here because no library computes a
KL between two forward passes of one peft model without materialising both full distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgetting._base import Measure, TaskPrompts, register_measure
from forgetting.data import load_probe_texts, probe_blocks
from gridrun.errors import GridrunError

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["KlMeasure", "mean_forward_kl"]


def _kl_sum(base_logits: Any, tuned_logits: Any, mask: Any, chunk: int) -> float:
    """Σ over unmasked positions of KL(softmax(base) ‖ softmax(tuned)), ``chunk`` positions at a time."""
    import torch

    total = 0.0
    for s in range(0, base_logits.size(1), chunk):
        # float64: in float32, log-probabilities carry ~1e-6 of rounding each, as large as the KL of a barely
        # trained adapter; a chunk at a time keeps the cost of the wider type small
        lp = torch.log_softmax(base_logits[:, s : s + chunk].double(), -1)
        lq = torch.log_softmax(tuned_logits[:, s : s + chunk].double(), -1)
        per_pos = (lp.exp() * (lp - lq)).sum(-1)  # [batch, chunk]
        total += float((per_pos * mask[:, s : s + chunk]).sum())
    return total


def mean_forward_kl(model: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 8, chunk: int = 16) -> float:
    """Mean per-token KL(base ‖ tuned) over every position of ``sequences`` (token ids), where base is ``model``
    with its peft adapter disabled."""
    import torch

    if not hasattr(model, "disable_adapter"):
        raise GridrunError("forgetting.kl: the model has no peft adapter to switch off for the base distribution")
    seqs = [s for s in sequences if s]
    if not seqs:
        return 0.0
    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for b in range(0, len(seqs), batch_size):
                rows = seqs[b : b + batch_size]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width))
                for k, r in enumerate(rows):  # right padding: a causal model's real positions never see it
                    ids[k, : len(r)] = torch.tensor(r)
                    mask[k, : len(r)] = 1.0
                ids, mask = ids.to(device), mask.to(device)
                with model.disable_adapter():
                    base = model(input_ids=ids).logits
                tuned = model(input_ids=ids).logits
                total += _kl_sum(base, tuned, mask, chunk)
                count += int(mask.sum())
                del base, tuned
    finally:
        model.train(was_training)
    return total / max(1, count)


@register_measure("kl")
class KlMeasure(Measure):
    """``forget/kl_task`` (the trial's eval prompts) and ``forget/kl_probe`` (the probe blocks); 0 is the base."""

    metric = "forget/kl_task"

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        self.task: list[list[int]] = []
        self.probe: list[list[int]] = []
        self.pad = 0

    def setup(self, tokenizer: Any, task_prompts: TaskPrompts) -> None:
        f, cap = self.spec.forgetting, self.spec.data.max_seq_len
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.task = [ids[:cap] for ids in tokenizer(task_prompts, add_special_tokens=False)["input_ids"]]
        self.probe = probe_blocks(tokenizer, load_probe_texts(f), f.seq_len, f.samples)

    def score(self, model: Any, tokenizer: Any, base: Any) -> dict[str, float]:
        return {
            self.metric: mean_forward_kl(model, self.task, self.pad),
            "forget/kl_probe": mean_forward_kl(model, self.probe, self.pad),
        }
