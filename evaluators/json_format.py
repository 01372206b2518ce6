"""``json_format``: is the whole completion exactly one JSON object, nothing before or after?

Metrics (reported as ``task/<name>``):
    format_success       completion (whitespace-trimmed) is exactly one JSON object
    duplicate_json_rate  completion holds two or more JSON objects (the study's common failure)
    schema_match         format success and the object's keys are exactly the requested ones
    exact_match          format success and the object equals the reference answer
    fail_empty, fail_extra_text, fail_invalid_json, fail_not_object   failure kinds, as rates

Option ``strictness``: ``strict`` (default) accepts only the bare object; ``lenient`` also accepts one object
wrapped in a Markdown code fence.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from evaluators._base import Evaluator, GenerationSettings, generate, register_evaluator

__all__ = ["JsonFormatEvaluator", "classify", "count_json_objects"]

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; strict JSON has neither


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def count_json_objects(text: str) -> int:
    """Number of top-level JSON objects that can be decoded anywhere in ``text``."""
    n, i = 0, 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return n
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):  # RecursionError: garbage nested a thousand deep
            i += 1
            continue
        if isinstance(obj, dict):
            n += 1
        i = end


def classify(completion: str, strictness: str = "strict") -> tuple[str, Any]:
    """``("ok", obj)`` or ``(failure_kind, None)`` for one completion."""
    text = completion.strip()
    if strictness == "lenient":
        m = _FENCE.match(text)
        if m:
            text = m.group(1).strip()
    if not text:
        return "empty", None
    try:
        obj, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN/Infinity, or nesting past Python's stack
        if text.startswith(("{", "[")):
            return "invalid_json", None  # it set out to be JSON and broke (a nested object is no rescue)
        # prose around a decodable object is "extra text", not "invalid"
        return ("extra_text" if count_json_objects(text) else "invalid_json"), None
    if end != len(text):
        return "extra_text", None
    if not isinstance(obj, dict):
        return "not_object", None
    return "ok", obj


@register_evaluator("json_format")
class JsonFormatEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = (
        "format_success",
        "duplicate_json_rate",
        "schema_match",
        "exact_match",
        "fail_empty",
        "fail_extra_text",
        "fail_invalid_json",
        "fail_not_object",
    )

    def __init__(self, generation: GenerationSettings | None = None, strictness: str = "strict") -> None:
        super().__init__(generation)
        if strictness not in ("strict", "lenient"):
            raise ValueError(f"evaluate.options.json_format.strictness: 'strict' or 'lenient', got {strictness!r}")
        self.strictness = strictness

    def score(self, completions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
        counts = dict.fromkeys(self.metrics, 0.0)
        for text, ex in zip(completions, examples, strict=True):
            kind, obj = classify(text, self.strictness)
            if count_json_objects(text) >= 2:
                counts["duplicate_json_rate"] += 1
            if kind != "ok":
                counts[f"fail_{kind}"] += 1
                continue
            counts["format_success"] += 1
            try:
                ref = json.loads(ex["answer"])
            except (json.JSONDecodeError, TypeError):
                ref = None
            keys = ex.get("keys") or (list(ref) if isinstance(ref, dict) else None)
            if keys is not None and sorted(obj) == sorted(keys):
                counts["schema_match"] += 1
            if ref is not None and obj == ref:
                counts["exact_match"] += 1
        n = max(1, len(examples))
        return {k: v / n for k, v in counts.items()}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        completions = generate(model, tokenizer, [e["prompt"] for e in examples], self.generation)
        return self.score(completions, examples)
