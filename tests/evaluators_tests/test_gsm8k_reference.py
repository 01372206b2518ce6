"""GSM8K answer extraction cross-checked against reference implementations, on generated cases.

- ``#### n``: lm-evaluation-harness's GSM8K "strict-match" filter, built from the task YAML inside the installed
  ``lm_eval`` package (its regex, then ``take_first``), compared at the value level after the YAML's
  ``regexes_to_ignore``; and its exact-match scoring against ours.
- ``\\boxed{...}``: math-verify's ``parse`` (boxed answers first), its sympy result reduced to an exact number.

Every disagreement must belong to a documented difference (``HASH_DIFFERENCES`` / ``BOXED_DIFFERENCES``, each with
its reason); each difference is also asserted on its own with the oracle's exact reading. Both oracles are dev
extras: without them these tests skip, saying which is missing.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from evaluators.gsm8k import Gsm8kEvaluator, extract_answer

F = Fraction
MINUS = "\u2212"


@dataclass(frozen=True)
class Case:
    text: str
    ours: Fraction | None  # what gridrun must read
    tag: str  # the case's class; a documented difference when it is a key of the differences table


# ---------------------------------------------------------------------------------------------------------------
# lm-evaluation-harness, GSM8K strict-match
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_strict() -> Any:
    """``text -> value or None`` as lm-eval's GSM8K strict-match reads it, plus its exact-match scorer."""
    pytest.importorskip("lm_eval", reason="lm-eval (dev extra) is the oracle for '#### n' extraction")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import get_filter

    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.origin is not None
    cfg = yaml.safe_load((Path(spec.origin).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    steps = next(f["filter"] for f in cfg["filter_list"] if f["name"] == "strict-match")
    assert [s["function"] for s in steps] == ["regex", "take_first"]
    metric = next(m for m in cfg["metric_list"] if m["metric"] == "exact_match")
    ignore = metric["regexes_to_ignore"]

    def filtered(text: str) -> str:
        resps: Any = [[text]]
        for s in steps:
            resps = get_filter(s["function"])(**{k: v for k, v in s.items() if k != "function"}).apply(resps, [{}])
        return next(iter(resps))

    def value(text: str) -> Fraction | None:
        s = filtered(text)
        if s == "[invalid]":
            return None
        for pattern in ignore:  # what its exact match compares: commas, '$', a trailing '.' dropped
            s = re.sub(pattern, "", s)
        try:
            return Fraction(Decimal(s))
        except (InvalidOperation, ValueError):
            return None  # "1.234.567": no number

    def exact_match(pred_text: str, ref_text: str) -> float:
        kw = {k: metric[k] for k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation") if k in metric}
        return float(exact_match_hf_evaluate([filtered(pred_text)], [ref_text], **kw)["exact_match"])

    value.exact_match = exact_match  # type: ignore[attr-defined]
    return value


#: where gridrun deliberately reads a ``####`` answer differently: tag -> reason
HASH_DIFFERENCES = {
    "unicode_minus": "U+2212 is the minus sign proper; the strict regex knows only ASCII '-'",
    "dollar": "'#### $18' is a common model habit; the strict regex has no '$' (though its metric ignores '$')",
    "spacing": "'####42' and '####  42' are still the answer marker; the strict regex needs exactly one space",
    "plus_sign": "'+5' is 5; the strict regex has no '+'",
    "bad_grouping": "'1,23' (a list? a decimal comma? Indian grouping?) is no answer rather than a guess; lm-eval "
    "drops the commas and reads 123",
    "scientific": "'1.5e3' is 1500; lm-eval stops at the 'e' and reads 1.5",
    "fraction": "'3/4' is 0.75; lm-eval stops at the '/' and reads 3",
    "mixed": "'1 1/2' is 1.5; lm-eval reads 1",
    "power": "'10^3' is 1000; lm-eval reads 10",
    "times_ten": "'1.5 × 10^3' is 1500; lm-eval reads 1.5",
    "scale": "'1.5 million' is 1500000; lm-eval reads 1.5",
}


def _ints(rng: random.Random) -> list[int]:
    small = list(range(0, 13)) + [rng.randint(13, 999) for _ in range(12)]
    large = [rng.randint(1_000, 10**12) for _ in range(20)] + [10**6, 1_500_000, 1_500_001, 999_999, 1_000_001]
    return small + large


def hash_cases() -> list[Case]:
    rng = random.Random(8)
    cases: list[Case] = []
    for n in _ints(rng):
        cases.append(Case(f"#### {n}", F(n), "int"))
        cases.append(Case(f"#### {n:,}", F(n), "int_commas"))
        cases.append(Case(f"#### -{n:,}", F(-n), "negative"))
        cases.append(Case(f"Steps: 2*3=<<2*3=6>>6\n#### {n:,}.", F(n), "trailing_period"))
        cases.append(Case(f"#### {n}% of them", F(n), "percent_and_words"))
        cases.append(Case(f"#### {n}\n\nQuestion: and then?\nAnswer: 1+1=2\n#### {n + 7}", F(n), "first_wins"))
        cases.append(Case(f"#### {MINUS}{n}", F(-n), "unicode_minus"))
        cases.append(Case(f"#### ${n:,}", F(n), "dollar"))
        cases.append(Case(f"####{n}", F(n), "spacing"))
    for _ in range(20):
        cents = rng.randint(1, 10**7)
        d = Decimal(cents) / 100
        cases.append(Case(f"#### {d}", F(d), "decimal"))
        cases.append(Case(f"#### {d:,}", F(d), "decimal"))
        cases.append(Case(f"#### -{d}.", F(-d), "decimal"))
        cases.append(Case(f"#### -${d}", F(-d), "dollar"))
        cases.append(Case(f"#### $-{d:,}", F(-d), "dollar"))
    cases += [
        Case("#### .5", F(1, 2), "decimal"),
        Case("#### 18.50", F(37, 2), "decimal"),
        Case("#### 007", F(7), "int"),
        Case("#### 1 500", F(1), "space_ends_number"),  # as lm-eval: a space ends a '####' number
        Case("#### 3 apples and 4 pears", F(3), "space_ends_number"),
        Case("#### - 5", None, "detached_sign"),  # neither reads it: the '-' is not touching the number
        Case("#### 1.234.567", None, "no_number"),
        Case("#### 12.5.3", None, "no_number"),
        Case("#### The answer is 5", None, "no_number"),  # not a '####' answer: gridrun's 'last' form reads 5
        Case("####  42", F(42), "spacing"),
        Case("####\t42", F(42), "spacing"),
        Case("#### +5", F(5), "plus_sign"),
        Case("#### +1,000", F(1000), "plus_sign"),
        Case("#### 1,23", None, "bad_grouping"),
        Case("#### 12,34,567", None, "bad_grouping"),
        Case("#### 1,2,3", None, "bad_grouping"),
        Case("#### 1,5000", None, "bad_grouping"),
        Case("#### 1.5e3", F(1500), "scientific"),
        Case("#### 2E-3", F(1, 500), "scientific"),
        Case("#### 3/4", F(3, 4), "fraction"),
        Case("#### 24/7", F(24, 7), "fraction"),
        Case("#### 1 1/2", F(3, 2), "mixed"),
        Case("#### 10^3", F(1000), "power"),
        Case("#### 2^{10}", F(1024), "power"),
        Case("#### 1.5 × 10^3", F(1500), "times_ten"),
        Case("#### 1.5 million", F(1_500_000), "scale"),
        Case("#### 2 billion", F(2 * 10**9), "scale"),
    ]
    return cases


def _hash_value(text: str) -> Fraction | None:
    value, form = extract_answer(text)
    return value if form == "hash" else None  # strict-match reads '####' answers only


def _agreement(
    cases: list[Case], ours: Callable[[str], Any], theirs: Callable[[str], Any], differences: Any
) -> tuple[int, dict[str, int]]:
    """``(agreeing cases, documented differences seen per tag)``: each case's value is ours; the oracle agrees on
    every case except those whose tag is a documented difference, where it must still differ."""
    agree, differ = 0, {}
    for c in cases:
        value = ours(c.text)
        assert value == c.ours, c
        other = theirs(c.text)
        if c.tag in differences:
            assert other != value, f"documented difference {c.tag!r} no longer differs: {c}"
            differ[c.tag] = differ.get(c.tag, 0) + 1
        else:
            assert other == value, (c, other)
            agree += 1
    assert set(differ) == set(differences)  # every documented difference is exercised
    assert len(cases) > 300
    return agree, differ


def test_hash_extraction_agrees_with_lm_eval_strict_match(lm_strict: Any) -> None:
    cases = hash_cases()
    agree, differ = _agreement(cases, _hash_value, lm_strict, HASH_DIFFERENCES)
    print(f"\ngridrun agrees with lm-eval strict-match on {agree}/{len(cases)} '####' cases; differences: {differ}")


@pytest.mark.parametrize(
    ("text", "ours", "theirs", "tag"),
    [
        ("#### \u22125", F(-5), None, "unicode_minus"),
        ("#### $18", F(18), None, "dollar"),
        ("#### -$5", F(-5), None, "dollar"),
        ("####42", F(42), None, "spacing"),
        ("#### +5", F(5), None, "plus_sign"),
        ("#### 1,23", None, F(123), "bad_grouping"),
        ("#### 1.5e3", F(1500), F(3, 2), "scientific"),
        ("#### 3/4", F(3, 4), F(3), "fraction"),
        ("#### 1 1/2", F(3, 2), F(1), "mixed"),
        ("#### 10^3", F(1000), F(10), "power"),
        ("#### 1.5 × 10^3", F(1500), F(3, 2), "times_ten"),
        ("#### 1.5 million", F(1_500_000), F(3, 2), "scale"),
    ],
    ids=lambda v: v if isinstance(v, str) and v in HASH_DIFFERENCES else None,
)
def test_documented_hash_difference(lm_strict: Any, text: str, ours, theirs, tag: str) -> None:
    assert tag in HASH_DIFFERENCES
    assert _hash_value(text) == ours
    assert lm_strict(text) == theirs


def test_scoring_agrees_with_lm_eval_exact_match(lm_strict: Any) -> None:
    """Scores per (completion, reference) pair: ours vs lm-eval's exact match with the GSM8K YAML's settings. They
    differ only where the extraction differs, or where lm-eval compares strings: '18.50' is not '18.5' to it."""
    rng = random.Random(11)
    pairs = []
    for n in _ints(rng):
        ref = f"Some steps.\n#### {n}"
        pairs += [(f"#### {n:,}", ref), (f"#### {n}.", ref), (f"#### {n + 1}", ref), (f"#### {n - 1:,}", ref)]
        pairs += [(f"#### -{n}", f"#### -{n}"), (f"#### {n}", f"#### {n * 10}")]
    pairs += [("#### 1,500,001", "#### 1,500,000"), ("#### 1500000", "#### 1,500,000"), ("#### 18.5", "#### 18.5")]
    string_not_number = [("#### 18.50", "#### 18.5"), ("#### 18.0", "#### 18"), ("#### 007", "#### 7")]
    ev = Gsm8kEvaluator()
    for pred, ref in pairs:
        assert ev.score([pred], [{"answer": ref}])["accuracy"] == lm_strict.exact_match(pred, ref), (pred, ref)
    for pred, ref in string_not_number:
        assert ev.score([pred], [{"answer": ref}])["accuracy"] == 1.0
        assert lm_strict.exact_match(pred, ref) == 0.0
    print(f"\ngridrun's accuracy equals lm-eval's exact match on {len(pairs)}/{len(pairs) + len(string_not_number)}")


# ---------------------------------------------------------------------------------------------------------------
# math-verify, boxed answers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def math_verify() -> Any:
    """``text -> exact number or None`` as math-verify parses the boxed answer; ``.verify(gold, text)``."""
    pytest.importorskip("math_verify", reason="math-verify (dev extra) is the oracle for \\boxed{} answers")
    import sympy
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]

    def value(text: str) -> Fraction | None:
        found = parse(text, extraction_config=config)
        if not found or isinstance(found[0], str):
            return None  # nothing, or only the unparsed string
        expr = found[0]
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs  # 'x = 5': its verify compares the right-hand side of an assignment
        if not isinstance(expr, sympy.Expr) or not expr.is_number:
            return None  # a set, a symbol, an expression in x
        expr = expr.doit()
        if expr.is_Rational:
            return Fraction(int(expr.p), int(expr.q))
        if not (expr.is_real and expr.is_finite):
            return None
        return Fraction(str(expr if expr.is_Float else expr.evalf(30)))

    value.verify = lambda gold, text: verify(parse(gold), parse(text, extraction_config=config))  # type: ignore[attr-defined]
    return value


#: where gridrun deliberately reads a ``\boxed{}`` differently: tag -> reason
BOXED_DIFFERENCES = {
    "percent": "GSM8K answers 'what percent' with the bare number, so 18\\% is 18; math-verify's parse gives 0.18 "
    "(its verify accepts both against 18)",
    "thin_space_grouping": "3\\,000 and 1\\ 000 are thousands written with LaTeX spaces; math-verify multiplies "
    "the groups (3\\,000 -> 0)",
    "trailing_period": "a sentence period inside the box (18.) is not part of the number; math-verify parses nothing",
    "braced_group": "{18} is a LaTeX group; math-verify reads a set",
    "several_boxes": "the last box is the answer (the MATH convention); math-verify collects all boxes into a set",
    "expression": "a box holding arithmetic (2+3, \\sqrt{4}) is no GSM8K answer: gridrun reads numbers, not "
    "expressions, and gives no answer; math-verify evaluates it",
    "e_notation": "1.5e3 is 1500; math-verify reads e as Euler's number",
    "scale": "1.5 \\text{ million} is 1500000; math-verify drops the word and reads 1.5",
    "grouped_fraction": "\\frac{1{,}000}{4} is 250; math-verify parses nothing",
    "text_number": "\\text{5} and \\mathbf{5} show the number 5; math-verify reads a symbol named '5'",
    "text_dollar": "\\text{\\$}18 is $18; math-verify reads a product with an empty text",
}


def _box(content: str, i: int) -> str:
    frames = ["The answer is \\boxed{%s}.", "So the total is $\\boxed{%s}$", "\\boxed{%s}", "Final: \\boxed{%s}\n"]
    return frames[i % len(frames)] % content


def boxed_cases() -> list[Case]:
    rng = random.Random(9)
    raw: list[tuple[str, Fraction | None, str]] = []
    for n in _ints(rng):
        raw += [(str(n), F(n), "int"), (f"{n:,}", F(n), "int_commas"), (f"{n:,}".replace(",", "{,}"), F(n), "int")]
        raw += [(f"-{n:,}", F(-n), "negative"), (f"{MINUS}{n}", F(-n), "negative"), (f"- {n}", F(-n), "negative")]
        raw += [
            (f"\\${n:,}", F(n), "dollar"),
            (f"-\\${n}", F(-n), "dollar"),
            (f"{n} \\text{{ dollars}}", F(n), "units"),
        ]
        if n:  # 0% is 0 either way
            raw += [(f"{n}\\%", F(n), "percent")]
        if n >= 1000:
            raw += [(f"{n:,}".replace(",", "\\,"), F(n), "thin_space_grouping")]
            raw += [(f"{n:,}".replace(",", "\\ "), F(n), "thin_space_grouping")]
        raw += [(f"{n}.", F(n), "trailing_period"), (f"{n} \\text{{ apples}}.", F(n), "trailing_period")]
    for _ in range(15):
        d = Decimal(rng.randint(1, 10**7)) / 100
        raw += [(str(d), F(d), "decimal"), (f"-{d:,}", F(-d), "decimal"), (f"\\${d}", F(d), "dollar")]
        a, b = rng.randint(1, 99), rng.randint(2, 99)
        raw += [(f"\\frac{{{a}}}{{{b}}}", F(a, b), "frac"), (f"\\dfrac{{{a}}}{{{b}}}", F(a, b), "frac")]
        raw += [(f"-\\tfrac{{{a}}}{{{b}}}", F(-a, b), "frac"), (f"\\frac{{-{a}}}{{{b}}}", F(-a, b), "frac")]
        w, num = rng.randint(1, 20), rng.randint(1, b - 1)
        raw += [
            (f"{w}\\frac{{{num}}}{{{b}}}", w + F(num, b), "mixed"),
            (f"{w} \\frac{{{num}}}{{{b}}}", w + F(num, b), "mixed"),
        ]
        raw += [(f"-{w}\\frac{{{num}}}{{{b}}}", -(w + F(num, b)), "mixed")]
        base, e = rng.randint(2, 12), rng.randint(0, 9)
        raw += [(f"{base}^{{{e}}}", F(base) ** e, "power"), (f"{base}^{e}", F(base) ** e, "power")]
        m = Decimal(rng.randint(11, 99)) / 10
        raw += [
            (f"{m} \\times 10^{{{e}}}", F(m) * 10**e, "times_ten"),
            (f"{m} \\cdot 10^{e}", F(m) * 10**e, "times_ten"),
        ]
        raw += [(f"{m}e{e + 1}", F(m) * 10 ** (e + 1), "e_notation")]
        raw += [(f"{m} \\text{{ million}}", F(m) * 10**6, "scale")]
        raw += [(f"{a} + {b}", None, "expression"), (f"{a} \\times {b}", None, "expression")]
    raw += [
        (".5", F(1, 2), "decimal"),
        ("0.25", F(1, 4), "decimal"),
        ("\\frac34", F(3, 4), "frac"),
        ("10^{-2}", F(1, 100), "power"),
        ("10^12", F(10**12), "power"),
        ("\\text{5}", F(5), "text_number"),
        ("\\mathbf{5}", F(5), "text_number"),
        ("\\textbf{18}", F(18), "text_number"),
        ("12\\text{apples}", F(12), "units"),
        ("5 \\mbox{ cm}", F(5), "units"),
        ("90^\\circ", F(90), "units"),
        ("x = 5", F(5), "assignment"),
        ("-{5}", F(-5), "int"),
        ("+5", F(5), "int"),
        ("5,6", None, "not_a_number"),
        ("1,23", None, "not_a_number"),
        ("x", None, "not_a_number"),
        ("5x", None, "not_a_number"),
        ("\\frac{1}{0}", None, "not_a_number"),
        ("\\sqrt{4}", None, "expression"),
        ("2+\\sqrt{2}", None, "expression"),
        ("{18}", F(18), "braced_group"),
        ("\\frac{1{,}000}{4}", F(250), "grouped_fraction"),
        ("\\text{\\$}18", F(18), "text_dollar"),
    ]
    cases = [Case(_box(content, i), value, tag) for i, (content, value, tag) in enumerate(raw)]
    cases += [
        Case("First \\boxed{2}, or rather \\boxed{3}.", F(3), "several_boxes"),
        Case("\\boxed{12} apples, so \\boxed{\\frac{1}{2}} each", F(1, 2), "several_boxes"),
        Case("Maybe \\boxed{7}; no: \\boxed{x}", None, "several_boxes_unreadable"),  # x is no number to either
        # a box in a box, one case per shape: the innermost (last) box is the answer
        Case("\\boxed{\\boxed{12}}", F(12), "nested"),
        Case("So \\boxed{\\boxed{\\boxed{12}}}.", F(12), "nested"),
        Case("The answer is \\boxed{ \\boxed{12} }.", F(12), "nested"),
        Case("\\boxed{\\text{The answer is } \\boxed{12}}", F(12), "nested"),
        Case("\\boxed{x = \\boxed{12}}", F(12), "nested"),
        Case("$\\boxed{\\boxed{\\frac{1}{2}}}$", F(1, 2), "nested"),
        Case("\\boxed{\\boxed{1,500}}", F(1500), "nested"),
        Case("\\boxed{\\boxed{-\\$5}}", F(-5), "nested"),
        Case("\\boxed{\\boxed{12}", F(12), "nested"),  # the outer box cut off, the inner one whole
        Case("\\boxed{7} then \\boxed{\\boxed{12}}", F(12), "nested"),
        Case("\\boxed{\\boxed{x}}", None, "nested_unreadable"),
        Case("\\boxed{\\boxed{2} \\boxed{3}}", F(3), "several_boxes"),  # the last innermost box
    ]
    return cases


def test_nesting_of_any_depth_reads_the_innermost_box() -> None:
    """A loop, not recursion: a hostile completion nesting boxes 50,000 deep is read, and so is its cut-off twin."""
    deep = "\\boxed{" * 50_000 + "7" + "}" * 50_000
    assert extract_answer(deep) == (F(7), "boxed")
    assert extract_answer("\\boxed{" * 50_000 + "7") == (None, "boxed")


def _boxed_value(text: str) -> Fraction | None:
    value, form = extract_answer(text)
    assert form == "boxed", text
    return value


def test_boxed_extraction_agrees_with_math_verify(math_verify: Any) -> None:
    cases = boxed_cases()
    agree, differ = _agreement(cases, _boxed_value, math_verify, BOXED_DIFFERENCES)
    print(f"\ngridrun agrees with math-verify on {agree}/{len(cases)} boxed cases; differences: {differ}")


@pytest.mark.parametrize(
    ("text", "ours", "theirs", "tag"),
    [
        ("\\boxed{18\\%}", F(18), F(18, 100), "percent"),
        ("\\boxed{3\\,000}", F(3000), F(0), "thin_space_grouping"),
        ("\\boxed{1\\ 000}", F(1000), F(0), "thin_space_grouping"),
        ("\\boxed{18.}", F(18), None, "trailing_period"),
        ("\\boxed{{18}}", F(18), None, "braced_group"),
        ("\\boxed{2} or rather \\boxed{3}", F(3), None, "several_boxes"),
        ("\\boxed{2 + 3}", None, F(5), "expression"),
        ("\\boxed{\\sqrt{4}}", None, F(2), "expression"),
        ("\\boxed{1.5 \\text{ million}}", F(1_500_000), F(3, 2), "scale"),
        ("\\boxed{\\frac{1{,}000}{4}}", F(250), None, "grouped_fraction"),
        ("\\boxed{\\text{5}}", F(5), None, "text_number"),
    ],
    ids=lambda v: v if isinstance(v, str) and v in BOXED_DIFFERENCES else None,
)
def test_documented_boxed_difference(math_verify: Any, text: str, ours, theirs, tag: str) -> None:
    assert tag in BOXED_DIFFERENCES
    assert extract_answer(text) == (ours, "boxed")
    assert math_verify(text) == theirs


def test_documented_boxed_difference_unexact_readings(math_verify: Any) -> None:
    """The two differences whose math-verify reading is not a plain number: e as Euler's number, an empty text."""
    import math

    assert extract_answer("\\boxed{1.5e3}") == (F(1500), "boxed")
    assert float(math_verify("\\boxed{1.5e3}")) == pytest.approx(4.5 * math.e)
    assert extract_answer("\\boxed{\\text{\\$}18}") == (F(18), "boxed")
    assert math_verify("\\boxed{\\text{\\$}18}") is None


def test_percent_grades_alike(math_verify: Any) -> None:
    """Reading 18\\% as 18 and math-verify reading 0.18 grade the same: its verify accepts 18 for a gold of 18."""
    assert math_verify.verify("$18$", "\\boxed{18\\%}")
    ev = Gsm8kEvaluator()
    assert ev.score(["\\boxed{18\\%}"], [{"answer": "#### 18"}])["accuracy"] == 1.0
