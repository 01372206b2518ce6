"""``json_format``: is the whole completion exactly one JSON object, nothing before or after?

Metrics (reported as ``task/<name>``):
    format_success       completion (whitespace-trimmed) is exactly one JSON object
    duplicate_json_rate  completion holds two or more JSON objects (the study's common failure)
    schema_match         format success and the object's keys are exactly the requested ones
    exact_match          format success and the object equals the reference answer
    fail_empty, fail_extra_text, fail_invalid_json, fail_not_object   failure kinds, as rates

Option ``strictness``: ``strict`` (default) accepts only the bare object; ``lenient`` also accepts one object
wrapped in a Markdown code fence with nothing else around it. The fence is CommonMark's: three or more backticks
or tildes, labelled ``json`` in any case or not at all (```json, ```JSON, ~~~json, ````), closed by a line of the
same character at least as long, or unclosed to the end of the text. Also accepted: the closing fence glued to the
last line ({...}```) and the whole fence on one line (```{...}``` or ```json {...}```). A fence labelled for
another language (```python) is not a JSON answer.

A "JSON object" in duplicate_json_rate is a top-level one: the objects inside an array (``[{...}, {...}]``) or
inside another object are parts of one value, not repeats, also when that value is cut off by the end of the
completion (``[{...}, {...`` ran out of tokens).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from evaluators._base import Evaluator, GenerationSettings, register_evaluator

__all__ = ["JsonFormatEvaluator", "classify", "count_json_objects"]

_OPEN = re.compile(r"(?P<fence>(?P<ch>[`~])(?P=ch){2,})(?P<info>[^\n]*)(?:\n|$)")  # a fence's opening line
_INLINE = re.compile(r"```(?:(?i:json)[ \t]*)?(?P<body>[^`\n]*)```")  # ```{"a": 1}``` on one line


def _unfence(text: str) -> str | None:
    """What the Markdown code fence that is the whole of ``text`` (stripped) holds, or None if it is not one.

    A CommonMark fenced code block (tests/evaluators_tests/test_json_reference.py checks this against
    markdown-it-py) whose info string's first word is empty or ``json`` in any case; unclosed, it runs to the end,
    as in CommonMark. Two forms CommonMark reads otherwise, accepted because models write them: the closing fence
    glued to the body's last line, and the whole fence on one line (a code span to CommonMark).
    """
    m = _OPEN.match(text)
    if m is None or (m.group("ch") == "`" and "`" in m.group("info")):  # a backtick fence's info has no backtick
        inline = _INLINE.fullmatch(text)
        return inline.group("body") if inline else None
    fence, ch, words = m.group("fence"), m.group("ch"), m.group("info").split()
    if words and words[0].lower() != "json":
        return None  # a fence for another language
    lines = text[m.end() :].split("\n")
    tail = rf"{re.escape(fence)}{re.escape(ch)}*[ \t]*"  # a closing fence: the same character, at least as many
    for k, line in enumerate(lines):
        if re.fullmatch(" {0,3}" + tail, line):  # the first closing fence ends the block
            return "\n".join(lines[:k]) if k == len(lines) - 1 else None  # text after it: not one fence
    glued = re.fullmatch(rf"(?P<last>.*[^\s{re.escape(ch)}])[ \t]*" + tail, lines[-1])
    if glued:
        lines[-1] = glued.group("last")
    return "\n".join(lines)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; strict JSON has neither


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


#: what a JSON text cut off by the end of the completion can end with, where the decoder's error points
_PARTIAL_TOKEN = re.compile(r"\s*(?:t(?:ru?)?|f(?:a(?:ls?)?)?|n(?:ul?)?|-?[0-9]*\.?[0-9]*(?:[eE][-+]?[0-9]*)?)\s*")


def _cut_off(text: str, error: json.JSONDecodeError) -> bool:
    """Whether a decode failed only because ``text`` ends before the value does (generation ran out of tokens)."""
    if error.msg.startswith("Unterminated string"):
        return True  # no closing quote anywhere after it
    return _PARTIAL_TOKEN.fullmatch(text, error.pos) is not None  # "", "tru", "-", "1.", "1e"


def count_json_objects(text: str) -> int:
    """Number of top-level JSON objects decodable anywhere in ``text``.

    An object inside another value is part of it, not counted: inside an object or an array (``[{...}, {...}]`` is
    one array), also when that value is cut off by the end of the text (``[{...}, {...`` ran out of tokens).
    """
    n, i = 0, 0
    while True:
        starts = [j for j in (text.find("{", i), text.find("[", i)) if j >= 0]
        if not starts:
            return n
        i = min(starts)
        try:
            value, i = _DECODER.raw_decode(text, i)
        except RecursionError:  # garbage nested a thousand deep: so is every later start in this run of brackets
            bracket = text[i]
            while i < len(text) and text[i] in (bracket, " ", "\t", "\n", "\r"):
                i += 1
            continue
        except json.JSONDecodeError as e:
            if _cut_off(text, e):
                return n  # the rest of the text is inside this one unfinished value
            i += 1
            continue
        except ValueError:  # NaN or Infinity inside: not JSON
            i += 1
            continue
        n += isinstance(value, dict)


def _holds_object(text: str) -> bool:
    """Whether a JSON object decodes anywhere in ``text``, at any depth (prose around one is "extra text")."""
    i = 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, i = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):
            i += 1
            continue
        if isinstance(obj, dict):
            return True
    return False


def classify(completion: str, strictness: str = "strict") -> tuple[str, Any]:
    """``("ok", obj)`` or ``(failure_kind, None)`` for one completion."""
    text = completion.strip()
    if strictness == "lenient":
        body = _unfence(text)
        if body is not None:
            text = body.strip()
    if not text:
        return "empty", None
    try:
        obj, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN/Infinity, or nesting past Python's stack
        if text.startswith(("{", "[")):
            return "invalid_json", None  # it set out to be JSON and broke (a nested object is no rescue)
        # prose around a decodable object is "extra text", not "invalid"
        return ("extra_text" if _holds_object(text) else "invalid_json"), None
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
        completions = self.complete(model, tokenizer, examples)
        return self.score(completions, examples)
