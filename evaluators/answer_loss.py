"""``answer_loss``: mean loss (and perplexity) of the reference answers given their prompts.

The forgetting study's task measure (task loss / perplexity falling while general ability falls too). Answers
are scored exactly as they are trained: prompt and answer tokenized separately, EOS appended, prompt masked.
Lower is better: use ``objective.direction: min``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from evaluators._base import Evaluator, register_evaluator

__all__ = ["AnswerLossEvaluator"]


@register_evaluator("answer_loss")
class AnswerLossEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = ("answer_loss", "answer_ppl")

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        import torch

        from gridrun.examples import collate, encode_example

        was_training = model.training
        model.eval()
        device = next(p.device for p in model.parameters())
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for i in range(0, len(examples), self.generation.batch_size):
                    enc = [
                        encode_example(tokenizer, e["prompt"], str(e["answer"]), 4096)
                        for e in examples[i : i + self.generation.batch_size]
                    ]
                    batch = {k: v.to(device) for k, v in collate(enc, tokenizer).items()}
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    labels = batch["labels"][:, 1:]
                    loss = torch.nn.functional.cross_entropy(
                        logits[:, :-1].float().reshape(-1, logits.size(-1)),
                        labels.reshape(-1),
                        ignore_index=-100,
                        reduction="sum",
                    )
                    total += float(loss)
                    count += int((labels != -100).sum())
        finally:
            model.train(was_training)
        mean = total / max(1, count)
        return {"answer_loss": mean, "answer_ppl": math.exp(min(mean, 50.0))}
