"""json_format cross-checked on generated cases.

- The lenient fence rule against a CommonMark implementation (markdown-it-py): a completion that is one fenced
  code block whose info string's first word is empty or ``json`` is read as that block's content. Two documented
  differences (``FENCE_DIFFERENCES``), where gridrun reads a form CommonMark does not; each is asserted to read
  exactly as its CommonMark-proper equivalent.
- duplicate_json_rate's object count against the ground truth of generated completions: top-level objects,
  arrays of objects, nested objects, prose (with brackets and braces that are not JSON) and a value cut off by the
  end of the text, in random order.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from evaluators.json_format import JsonFormatEvaluator, classify, count_json_objects

BODIES = [
    '{"a": 1}',
    '{"a": 1}\n{"a": 1}',
    "[1, 2]",
    "",
    '{"a": 1',
    'Sure: {"a": 1}',
    '{\n  "a": [1, 2],\n  "b": "x"\n}',
    '{"a": "```"}',
    '  {"a": 1}  ',
]
INFOS = ["", "json", "JSON", "Json", " json", "json ", "json title=x", "jsonc", "python", "js", "js`on"]
CLOSINGS = ["same", "longer", "shorter", "other_char", "indent2", "indent4", "trailing_space", "none", "glued"]

#: where gridrun's lenient rule reads a fence CommonMark reads otherwise: tag -> reason
FENCE_DIFFERENCES = {
    "glued": "models glue the closing fence to the last line ({...}```); read as if it stood on its own line, where "
    "CommonMark leaves the fence unclosed and the backticks in its content",
    "one_line": "```{...}``` (or ```json {...}```) on one line is a code span to CommonMark; read as the fence a "
    "model meant",
}


@pytest.fixture(scope="module")
def commonmark() -> Any:
    """``text -> classify result`` with the fence found by markdown-it-py's CommonMark parser."""
    pytest.importorskip("markdown_it", reason="markdown-it-py (dev extra) is the CommonMark oracle for fences")
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark")

    def lenient(text: str) -> tuple[str, Any]:
        stripped = text.strip()
        tokens = md.parse(stripped)
        if len(tokens) == 1 and tokens[0].type == "fence":
            words = tokens[0].info.split()
            if not words or words[0].lower() == "json":
                return classify(tokens[0].content, "strict")
        return classify(stripped, "strict")

    return lenient


def _fence(ch: str, n: int, info: str, body: str, closing: str) -> str:
    fence = ch * n
    other = "~~~" if ch == "`" else "```"
    close = {
        "same": f"\n{fence}",
        "longer": f"\n{fence}{ch}",
        "shorter": f"\n{ch * (n - 1)}",
        "other_char": f"\n{other}",
        "indent2": f"\n  {fence}",
        "indent4": f"\n    {fence}",
        "trailing_space": f"\n{fence}   ",
        "none": "",
        "glued": fence,
    }[closing]
    return f"{fence}{info}\n{body}{close}"


def fence_cases() -> list[tuple[str, str, str | None]]:
    """``(text, tag, equivalent)``: equivalent is, for a documented difference, the CommonMark-proper text that
    gridrun must read it as."""
    rng = random.Random(5)
    cases: list[tuple[str, str, str | None]] = []
    for _ in range(700):
        ch, n = rng.choice("`~"), rng.choice([3, 4, 5])
        info, body, closing = rng.choice(INFOS), rng.choice(BODIES), rng.choice(CLOSINGS)
        text = _fence(ch, n, info, body, closing)
        before = rng.choice(["", "", "Here you go:\n", "  "])
        after = rng.choice(["", "", "\nHope this helps.", "\n" + text, "\n\n"])
        if closing == "glued" and not (before + after).strip():
            cases.append((before + text + after, "glued", before + _fence(ch, n, info, body, "same") + after))
        else:  # a glued fence with more text around: CommonMark's reading
            cases.append((before + text + after, "commonmark", None))
    for body in ['{"a": 1}', '{"a": 1} {"a": 1}', "[1, 2]", '{"a": 1', 'x {"a": 1}', ""]:
        for info in ["", "json ", "JSON"]:
            cases.append((f"```{info}{body}```", "one_line", f"```{info.strip()}\n{body}\n```"))
    return cases


def test_lenient_fence_rule_agrees_with_commonmark(commonmark: Any) -> None:
    cases = fence_cases()
    agree, differ = 0, {t: 0 for t in FENCE_DIFFERENCES}
    for text, tag, equivalent in cases:
        ours = classify(text, "lenient")
        if tag in FENCE_DIFFERENCES and equivalent is not None:
            assert ours == commonmark(equivalent), (text, tag)  # read exactly as its CommonMark-proper form
            if commonmark(text) != ours:
                differ[tag] += 1
                continue
        else:
            assert ours == commonmark(text), (text, tag)
        agree += 1
    assert all(differ.values()), differ  # every documented difference shows
    assert len(cases) > 500
    print(f"\ngridrun's lenient fence rule agrees with CommonMark on {agree}/{len(cases)} cases; differences: {differ}")


@pytest.mark.parametrize(
    ("text", "kind", "commonmark_kind"),
    [
        ('```json\n{"a": 1}```', "ok", "extra_text"),  # glued
        ('```{"a": 1}```', "ok", "extra_text"),  # one line
        ('```json {"a": 1}```', "ok", "extra_text"),  # one line
    ],
)
def test_documented_fence_difference(commonmark: Any, text: str, kind: str, commonmark_kind: str) -> None:
    assert classify(text, "lenient")[0] == kind
    assert commonmark(text)[0] == commonmark_kind


@pytest.mark.parametrize(
    "text",
    [
        '```JSON\n{"a": 1}\n```',
        '~~~json\n{"a": 1}\n~~~',
        '````json\n{"a": 1}\n`````',
        '```\n{"a": 1}\n```',
        '```json\n{"a": 1}',  # unclosed: CommonMark runs the block to the end
        '```json title="answer"\n{"a": 1}\n  ```',
    ],
)
def test_documented_fences_are_accepted(commonmark: Any, text: str) -> None:
    assert classify(text, "lenient") == ("ok", {"a": 1}) == commonmark(text)
    assert classify(text, "strict")[0] == "extra_text"


# ---------------------------------------------------------------------------------------------------------------
# duplicate_json_rate: top-level objects only
# ---------------------------------------------------------------------------------------------------------------

_WORDS = ["name", "age", "tags", "city", "note", "{x}", "[y]", 'say "hi"', "a,b", "}{", "]["]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.randint(-1000, 1000)
    if kind == 1:
        return rng.choice([1.5, -0.25, 1e-07, 2.5e10, True, False, None])
    if kind in (2, 3):
        return rng.choice(_WORDS) + " " + rng.choice(_WORDS)
    if kind in (4, 5):
        return _object(rng, depth + 1)
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def _object(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {rng.choice(_WORDS): _value(rng, depth) for _ in range(rng.randint(0, 3))}


def _dumps(value: Any, rng: random.Random) -> str:
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 2]))


PROSE = ["Sure! Here it is:", "Note [1]: see above.", "Use {curly} braces.", "Done.", "Answer (in JSON):", "[draft]"]
SEPARATORS = [" ", "\n", "\n\n", " and ", ", ", ""]


def duplicate_cases() -> list[tuple[str, int, list[str]]]:
    """``(text, top-level objects, piece kinds)``."""
    rng = random.Random(13)
    cases = []
    for _ in range(500):
        pieces, kinds, n = [], [], 0
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["object", "object", "array_of_objects", "array", "nested", "prose"])
            if kind == "object":
                pieces.append(_dumps(_object(rng), rng))
                n += 1
            elif kind == "array_of_objects":
                pieces.append(_dumps([_object(rng) for _ in range(rng.randint(1, 3))], rng))
            elif kind == "array":
                pieces.append(_dumps([_value(rng, 3) for _ in range(rng.randint(0, 3))], rng))
            elif kind == "nested":
                pieces.append(_dumps({"outer": _object(rng), "list": [_object(rng), _object(rng)]}, rng))
                n += 1
            else:
                pieces.append(rng.choice(PROSE))
            kinds.append(kind)
        if rng.random() < 0.4:  # generation ran out of tokens inside one more value
            whole = _dumps(rng.choice([[_object(rng), _object(rng)], {"a": _object(rng), "b": [1, 2]}]), rng)
            pieces.append(whole[: rng.randint(1, len(whole) - 1)])
            kinds.append("cut_off")
        sep = [rng.choice(SEPARATORS) for _ in pieces]
        text = "".join(s + p for s, p in zip(sep, pieces, strict=True))
        cases.append((text, n, kinds))
    return cases


def test_count_json_objects_matches_generated_truth() -> None:
    cases = duplicate_cases()
    for text, n, kinds in cases:
        assert count_json_objects(text) == n, (text, kinds)
    with_arrays = sum("array_of_objects" in k for _, _, k in cases)
    cut = sum("cut_off" in k for _, _, k in cases)
    assert with_arrays > 100 and cut > 100
    print(f"\ncount_json_objects matches the truth on {len(cases)}/{len(cases)} ({with_arrays} with arrays, {cut} cut)")


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ('[{"a": 1}, {"a": 1}]', 0),  # one array, not two objects
        ('[{"a": 1}, {"b": 2}]\n[{"a": 1}]', 0),
        ('{"a": [{"b": 1}, {"c": 2}]}', 1),
        ('Here: [{"a": 1}, {"b": 2}] and also {"c": 3}', 1),
        ('[{"a": 1}, {"b": 2}, {"c"', 0),  # an array cut off by the end of the text: still one value
        ('{"x": {"b": 1}, "y": {"c": 2}, "z": tr', 0),  # an object cut off: its inner objects are not top-level
        ('{"a": 1} {"a": 1, "b": ', 1),  # a repeat cut off is not an object (yet)
        ('{"a": 1}\n{"a": 1}', 2),
        ('{"a": 1}, {"a": 1}', 2),  # objects side by side without brackets are repeats
        ('{"a": NaN} {"b": 1}', 1),
    ],
)
def test_count_json_objects_top_level(text: str, n: int) -> None:
    assert count_json_objects(text) == n


def test_duplicate_rate_ignores_objects_inside_arrays() -> None:
    ev = JsonFormatEvaluator()
    examples = [{"answer": '{"a": 1}'}] * 3
    out = ev.score(['[{"a": 1}, {"a": 1}]', '{"a": 1}{"a": 1}', '[{"a": 1}, {"a": 1}, {"a"'], examples)
    assert out["duplicate_json_rate"] == pytest.approx(1 / 3)
    assert out["fail_not_object"] == pytest.approx(1 / 3) and out["fail_extra_text"] == pytest.approx(1 / 3)
    assert out["fail_invalid_json"] == pytest.approx(1 / 3)
