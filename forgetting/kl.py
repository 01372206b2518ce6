"""``kl``: mean per-token forward KL(base ‖ tuned) of next-token distributions, on the task's own eval prompts
(``forget/kl_task``, the setting of arXiv 2509.04259, where it predicts forgetting) and on the probe text
(``forget/kl_probe``, general ability).

The base distributions come from the same model with its adapter switched off (peft's ``disable_adapter``), so
no second model is loaded and an untrained adapter (LoRA's B is zero) gives exactly 0. The KL is summed over
position chunks: each chunk's log-softmax (float64) is made for both models and dropped before the next, so no
``[batch, seq, vocab]`` logits are ever held. Written here because no library computes a
KL between two forward passes of one peft model without materialising both full distributions
(``gridrun.losses.forward_kl_sum``: both models' final hidden states, then the LM head a chunk at a time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgetting._base import Measure, TaskPrompts, register_measure
from forgetting.data import load_probe_texts, probe_blocks
from gridrun.errors import GridrunError
from gridrun.losses import KL_CHUNK

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["KlMeasure", "mean_forward_kl"]


def mean_forward_kl(
    model: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 8, chunk: int = KL_CHUNK
) -> float:
    """Mean per-token KL(base ‖ tuned) over every position of ``sequences`` (token ids), where base is ``model``
    with its peft adapter disabled; ``chunk`` positions of both at a time go through the LM head."""
    import torch

    from gridrun.losses import forward_kl_sum, kl_head, scoring

    if not hasattr(model, "disable_adapter"):
        raise GridrunError("forgetting.kl: the model has no peft adapter to switch off for the base distribution")
    seqs = [s for s in sequences if s]
    total, count = 0.0, 0
    with scoring(model) as device:
        head = kl_head(model)  # once: a 16-bit head's float32 copy serves every batch
        for b in range(0, len(seqs), batch_size):
            rows = seqs[b : b + batch_size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, r in enumerate(rows):  # right padding: a causal model's real positions never see it
                ids[k, : len(r)] = torch.tensor(r)
                mask[k, : len(r)] = 1
            ids, mask = ids.to(device), mask.to(device)
            total += forward_kl_sum(model, {"input_ids": ids}, mask, chunk, head)
            count += int(mask.sum())
    return total / max(1, count)


@register_measure("kl")
class KlMeasure(Measure):
    """``forget/kl_task`` (the trial's eval prompts) and ``forget/kl_probe`` (the probe blocks); 0 is the base."""

    metric = "forget/kl_task"
    switches_adapter = True

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
