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

_NUM = r"[-+]?\$?\s?[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\$?\s?[-+]?\.\d+"
_HASH = re.compile(r"####\s*(" + _NUM + ")")
_ANY = re.compile(_NUM)
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}|\\[dt]?frac(\d)(\d)")  # \frac{3}{4}, \frac34
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{[^{}]*\}")


def to_number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    sign = -1.0 if cleaned.startswith("-") or cleaned.startswith("+-") else 1.0
    cleaned = cleaned.lstrip("+-")
    try:
        return sign * float(cleaned)
    except ValueError:
        return None


def _boxed_contents(text: str) -> list[str]:
    """What each ``\\boxed{...}`` holds, braces balanced (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``)."""
    out = []
    start = text.find("\\boxed{")
    while start >= 0:
        i, depth = start + len("\\boxed{"), 1
        j = i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            out.append(text[i : j - 1])
        start = text.find("\\boxed{", j)
    return out


def _latex_number(tex: str) -> float | None:
    """A number written in LaTeX as models box it: ``\\$18``, ``18\\%``, ``1{,}000``, ``18 \\text{ dollars}``,
    ``\\frac{3}{4}``."""
    t = _TEXT.sub("", tex).replace("{,}", ",").replace("\\$", "$").replace("\\%", "").replace("%", "")
    t = t.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").strip()
    t = re.sub(r"^([-+]?)\{(.*)\}$", r"\1\2", t)  # -{5}
    frac = _FRAC.fullmatch(t.lstrip("-"))
    if frac:
        num, den = to_number(frac.group(1) or frac.group(3)), to_number(frac.group(2) or frac.group(4))
        if num is not None and den:
            return (-1 if t.startswith("-") else 1) * num / den
    found = _ANY.findall(t)
    return to_number(found[0]) if len(found) == 1 else None


def extract_answer(text: str) -> tuple[float | None, str]:
    """``(value, form)`` with form ``hash`` | ``boxed`` | ``last`` | ``none``.

    The first ``#### n`` wins (a model that runs on into a new question writes more of them; lm-eval's GSM8K
    strict match takes the first too); of ``\\boxed{}`` the last wins (the MATH convention). Otherwise the
    last number in the text.
    """
    found = _HASH.findall(text)
    if found:
        return to_number(found[0]), "hash"
    for content in reversed(_boxed_contents(text)):
        value = _latex_number(content)
        if value is not None:
            return value, "boxed"
    found = _ANY.findall(text)
    if found:
        return to_number(found[-1]), "last"
    return None, "none"


@register_evaluator("gsm8k")
class Gsm8kEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "extracted", "format_hash", "format_boxed")
    #: Answer formats a training target must show for this evaluator to find its answers (gridrun validate).
    answer_formats: ClassVar[tuple[str, ...]] = (r"####\s*(?:" + _NUM + ")", r"\\boxed\{")

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
