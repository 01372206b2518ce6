"""General-ability probe: mean next-token loss on held-out general text (lower is better)."""

from __future__ import annotations

from typing import Any

__all__ = ["probe_loss"]


def probe_loss(model: Any, blocks: list[list[int]], batch_size: int = 16) -> float:
    """Token-weighted mean cross-entropy of ``model`` over equal-length token ``blocks``."""
    import torch

    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), batch_size):
                ids = torch.tensor(blocks[i : i + batch_size], device=device)
                logits = model(input_ids=ids).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum"
                )
                total += loss.item()
                count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / max(1, count)
