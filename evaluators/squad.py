"""``squad``: extractive QA scored with SQuAD v1.1 rules, for both prompt formats.

Normalization (the official script's): lowercase, drop punctuation, drop the articles a/an/the, collapse
whitespace. EM and F1 take the best over all gold answers. ``lenient``: the normalized gold is contained in
the normalized prediction.

Examples carry ``answers`` (list of gold strings, one per question in sequential format: a list of lists) and
``format`` (``batch``: one question per prompt; ``sequential``: all questions of one context in one prompt,
answered as numbered lines ``1. ...``). Metrics: em, f1, lenient (per question), questions_per_context, and the
cost of answering one context: prompt_tokens, gen_tokens and latency_s summed over its prompts (in ``batch``
format a context costs one prompt per question, in ``sequential`` one prompt). Latency is the wall time of
generation divided by the number of contexts.
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from typing import Any, ClassVar

from evaluators._base import Evaluator, register_evaluator

__all__ = ["SquadEvaluator", "exact_match", "f1", "normalize", "split_numbered"]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, golds: list[str]) -> float:
    return float(any(normalize(pred) == normalize(g) for g in golds)) if golds else 0.0


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:  # v1.1 has no both-empty case: "a" vs "the" is an exact match with F1 0
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: list[str]) -> float:
    return max((_f1_one(pred, g) for g in golds), default=0.0)


def lenient(pred: str, golds: list[str]) -> float:
    """1 if some normalized gold appears in the normalized prediction as a run of whole tokens."""
    p = f" {normalize(pred)} "
    return float(any(normalize(g) and f" {normalize(g)} " in p for g in golds))


_NUMBERED = re.compile(r"^\s*(\d+)\s*[.):]\s*(.*)$")


def split_numbered(text: str, n: int) -> list[str]:
    """Answers ``1. x`` / ``2) y`` / ``3: z`` → ``["x", "y", "z"]`` (missing ones are empty strings)."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m and 1 <= int(m.group(1)) <= n and int(m.group(1)) not in found:
            found[int(m.group(1))] = m.group(2).strip()
    return [found.get(i + 1, "") for i in range(n)]


@register_evaluator("squad")
class SquadEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = (
        "em",
        "f1",
        "lenient",
        "questions_per_context",
        "prompt_tokens",
        "gen_tokens",
        "latency_s",
    )
    timing_metrics: ClassVar[tuple[str, ...]] = ("latency_s",)

    def score(self, completions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
        em = f = le = 0.0
        questions = 0
        for text, ex in zip(completions, examples, strict=True):
            golds = ex.get("answers") or [[ex["answer"]]]
            preds = split_numbered(text, len(golds)) if ex.get("format") == "sequential" else [text.strip()]
            if ex.get("format") != "sequential":
                golds = [golds[0] if isinstance(golds[0], list) else golds]
            for pred, gold in zip(preds, golds, strict=False):
                em += exact_match(pred, gold)
                f += f1(pred, gold)
                le += lenient(pred, gold)
                questions += 1
        q = max(1, questions)
        contexts = max(1, len({ex.get("context_id", i) for i, ex in enumerate(examples)}))
        return {"em": em / q, "f1": f / q, "lenient": le / q, "questions_per_context": questions / contexts}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        t0 = time.perf_counter()
        completions = self.complete(model, tokenizer, examples)
        elapsed = time.perf_counter() - t0
        out = self.score(completions, examples)
        contexts = max(1, len({ex.get("context_id", i) for i, ex in enumerate(examples)}))
        out["prompt_tokens"] = (
            sum(len(tokenizer(e["prompt"], add_special_tokens=False)["input_ids"]) for e in examples) / contexts
        )
        out["gen_tokens"] = (
            sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions) / contexts
        )
        out["latency_s"] = elapsed / contexts
        return out
