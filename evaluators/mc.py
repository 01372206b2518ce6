"""Multiple-choice log-likelihood accuracy: the standard general-ability measure for forgetting.

Each item is a question (a context) and choices; the model's pick is the choice whose continuation has the
highest *length-normalized* log-likelihood (mean per token), as HellaSwag/ARC/WinoGrande-style harnesses score
it. Used by the forgetting probe (``forget/mc_accuracy``), not as a task evaluator.
"""

from __future__ import annotations

from typing import Any

__all__ = ["mc_accuracy"]


def mc_accuracy(model: Any, tokenizer: Any, items: list[dict[str, Any]], batch_size: int = 32) -> float:
    """Share of ``items`` (``question``, ``choices``, ``answer`` index) the model gets right."""
    import torch

    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs: list[tuple[int, int, list[int], int]] = []  # (item, choice, ids, n_context_tokens)
    for i, item in enumerate(items):
        ctx = tokenizer(item["question"], add_special_tokens=False)["input_ids"]
        for j, choice in enumerate(item["choices"]):
            cont = tokenizer(" " + str(choice).strip(), add_special_tokens=False)["input_ids"]
            seqs.append((i, j, ctx + cont, len(ctx)))
    scores: dict[tuple[int, int], float] = {}
    try:
        with torch.no_grad():
            for b in range(0, len(seqs), batch_size):
                chunk = seqs[b : b + batch_size]
                width = max(len(s[2]) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for k, (_, _, s, _) in enumerate(chunk):
                    ids[k, : len(s)] = torch.tensor(s)
                    mask[k, : len(s)] = 1
                logp = torch.log_softmax(
                    model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1
                )
                for k, (i, j, s, n_ctx) in enumerate(chunk):
                    tgt = torch.tensor(s[n_ctx:], device=logp.device)
                    lp = logp[k, n_ctx - 1 : len(s) - 1].gather(-1, tgt[:, None]).squeeze(-1)
                    scores[(i, j)] = float(lp.mean())
    finally:
        model.train(was_training)
    right = 0
    for i, item in enumerate(items):
        pick = max(range(len(item["choices"])), key=lambda j: scores[(i, j)])
        right += int(pick == int(item["answer"]))
    return right / max(1, len(items))
