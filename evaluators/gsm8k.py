"""``gsm8k``: final-answer extraction and numeric exact match for math word problems.

Understands ``#### 42`` (GSM8K) and ``\\boxed{42}`` (the instruct-model habit), numbers with thousands commas,
signs, decimals and a leading ``$``; falls back to the last number in the text. Metrics: accuracy (numeric
match with the reference's final answer), extracted (share of completions with any final answer),
format_hash / format_boxed (which answer format the model used).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from evaluators._base import Evaluator, generate, register_evaluator

__all__ = ["Gsm8kEvaluator", "extract_answer", "to_number"]

_NUM = r"[-+]?\$?\s?\d[\d,]*(?:\.\d+)?|[-+]?\$?\s?\.\d+"
_HASH = re.compile(r"####\s*(" + _NUM + ")")
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}")
_ANY = re.compile(_NUM)


def to_number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_answer(text: str) -> tuple[float | None, str]:
    """``(value, form)`` with form ``hash`` | ``boxed`` | ``last`` | ``none``."""
    for form, pattern in (("hash", _HASH), ("boxed", _BOXED)):
        found = pattern.findall(text)
        if found:
            return to_number(found[-1]), form
    found = _ANY.findall(text)
    if found:
        return to_number(found[-1]), "last"
    return None, "none"


@register_evaluator("gsm8k")
class Gsm8kEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "extracted", "format_hash", "format_boxed")
    #: Answer formats a training target must show for this evaluator to find its answers (gridrun validate).
    answer_formats: ClassVar[tuple[str, ...]] = (r"####\s*" + _NUM, r"\\boxed\{")

    def score(self, completions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
        c = dict.fromkeys(self.metrics, 0.0)
        for text, ex in zip(completions, examples, strict=True):
            value, form = extract_answer(text)
            ref, _ = extract_answer(str(ex["answer"]))
            if form in ("hash", "boxed"):
                c[f"format_{form}"] += 1
            if value is not None:
                c["extracted"] += 1
                if ref is not None and abs(value - ref) < 1e-6 * max(1.0, abs(ref)):
                    c["accuracy"] += 1
        n = max(1, len(examples))
        return {k: v / n for k, v in c.items()}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        return self.score(generate(model, tokenizer, [e["prompt"] for e in examples], self.generation), examples)
