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
        from gridrun.examples import collate, encode_example
        from gridrun.losses import nll_sum, scoring

        total, count = 0.0, 0
        with scoring(model) as device:
            for i in range(0, len(examples), self.generation.batch_size):
                enc = [
                    encode_example(tokenizer, e["prompt"], str(e["answer"]), 4096)
                    for e in examples[i : i + self.generation.batch_size]
                ]
                batch = {k: v.to(device) for k, v in collate(enc, tokenizer).items()}
                s, n = nll_sum(model, batch, batch["labels"])
                total, count = total + s, count + n
        mean = total / max(1, count)
        return {"answer_loss": mean, "answer_ppl": math.exp(min(mean, 50.0))}
