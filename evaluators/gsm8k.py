"""``gsm8k``: final-answer extraction and numeric exact match for math word problems.

Where the answer is: the first ``#### n`` (GSM8K), else the last ``\\boxed{...}`` (the instruct-model habit), else
the last number in the text. What is read as a number, deliberately (tests/evaluators_tests/test_gsm8k_reference.py
cross-checks it against lm-evaluation-harness's strict ``####`` regex and against math-verify for boxed answers):

- thousands separators only in groups of three (``1,500,001``; in a box also ``1{,}000``, ``3\\,000``, ``1\\ 000``);
  a malformed group (``1,23``, ``1.234.567``) is no number at all, never a partial one;
- a sign counts only when it touches the number (``-5``, ``$-5``, ``-$5``, Unicode minus ``−5``): ``answer - 65``
  and a bullet line ``- 18`` are 65 and 18, and ``COVID-19`` is 19;
- ``$`` and ``%`` are dropped (percent in percent units: GSM8K answers "what percent" with the bare number), a
  trailing sentence period is not a decimal point, and a scale word multiplies (``1.5 million``);
- fractions ``3/4``, ``\\frac{3}{4}`` (``\\dfrac``, ``\\tfrac``, ``\\frac34``), mixed numbers ``1 1/2`` and
  ``1\\frac{1}{2}``, powers ``10^3`` / ``10³``, scientific ``1.5e3`` / ``1.5 \\times 10^3``;
- in a box, unit words after the number (``18 \\text{ dollars}``) and a leading ``x =`` are allowed; anything
  else (``2+3``, ``\\sqrt{4}``, ``5x``) is no answer rather than a guess, and so is an unreadable last box (the
  earlier boxes are superseded answers, not fallbacks);
- a box in a box (``\\boxed{\\boxed{12}}``, ``\\boxed{\\text{so } \\boxed{12}}``) is read at its innermost, last box.

Values are exact fractions. Accuracy: integers compare exactly (``1,500,001`` is not ``1500000``); two non-integers
with a relative tolerance of 1e-9 (``\\frac{2}{3}`` = ``0.6666666667``). Metrics: accuracy (match with the
reference's final answer), extracted (share of completions with a readable final answer), format_hash /
format_boxed (which answer format the model used, readable or not).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, ClassVar

from evaluators._base import Evaluator, register_evaluator

__all__ = ["Gsm8kEvaluator", "extract_answer", "same_number", "to_number"]

# math-verify (a maintained LaTeX-to-sympy reader) stays a test oracle and is not used here at runtime: its parse
# timeout is signal.alarm, which raises outside the main thread, and Ray Tune runs trainables in a thread (without
# the timeout a box like 9^{9^{9^9}} can hang sympy); it reads LaTeX as mathematics (18\% -> 0.18, 3\,000 -> 0,
# 1.5e3 -> 1.5*e*3, several boxes -> a set), where GSM8K wants one number or none; and it pins an antlr4 runtime.

_SIGN = "[-+\u2212]"  # U+2212 is the minus sign proper
_SUP = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_SUPS = "[⁰¹²³⁴⁵⁶⁷⁸⁹]"
_SCALE = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_MAX_EXP = 1000  # 10^1000 is a big integer but a cheap one; 9^(9^9) is not

#: a number in running text; the lookbehind / lookahead keep a match from being the head or tail of a longer one
_PLAIN = re.compile(
    rf"""
    (?<![0-9.,])
    (?: (?<![\w)\]}}])(?P<s1>{_SIGN})(?P<c1>\$\s?)? | (?P<c2>\$\s?)(?P<s2>{_SIGN})? )?
    (?: (?P<int>[0-9]{{1,3}}(?:,[0-9]{{3}})+|[0-9]+)(?P<dec>\.[0-9]+)? | (?P<dec0>\.[0-9]+) )
    (?:
        [ \t]+(?P<mn>[0-9]+)/(?P<md>[0-9]+)                                  # mixed 1 1/2
      | /(?P<den>[0-9]+)                                                     # 3/4
      | \^(?:\{{(?P<p1>{_SIGN}?[0-9]+)\}}|(?P<p2>{_SIGN}?[0-9]+))           # 10^3, 10^{{3}}
      | (?P<sup>⁻?{_SUPS}+)                                                 # 10³
      | [eE](?P<e>{_SIGN}?[0-9]+)                                            # 1.5e3
      | [ \t]*(?:[x×*·]|\\times|\\cdot)[ \t]*10
        (?:\^(?:\{{(?P<t1>{_SIGN}?[0-9]+)\}}|(?P<t2>{_SIGN}?[0-9]+))|(?P<tsup>⁻?{_SUPS}+))   # 1.5 × 10^3
    )?
    (?![0-9]|[.,/^][0-9]|[eE]{_SIGN}?[0-9])
    (?:[ \t]+(?P<scale>(?i:thousand|million|billion|trillion))\b)?
    """,
    re.VERBOSE,
)

_UNIT = "\x01"  # marks a \text{...} of words (a unit) while a box is normalized
_NUM_B = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,3}(?:\ [0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
#: the whole of a normalized ``\boxed{...}``
_BOXED = re.compile(
    rf"""
    \s*(?:(?:[A-Za-z]\w*|{_UNIT}[^{_UNIT}]*{_UNIT})\s*=\s*)?                    # x = ...
    (?: (?P<s1>{_SIGN})\s*(?P<c1>\$)?\s* | (?P<c2>\$)\s*(?P<s2>{_SIGN})?\s* )?
    (?:
        (?:(?P<mw>[0-9]+)\s*)?\\frac\s*
        (?:\{{\s*(?P<fn>{_SIGN}?\s*(?:{_NUM_B}))\s*\}}\s*\{{\s*(?P<fd>{_SIGN}?\s*(?:{_NUM_B}))\s*\}}
          |(?P<fn1>[0-9])(?P<fd1>[0-9]))
      | (?P<num>{_NUM_B})
        (?:
            \s*/\s*(?P<den>[0-9]+)
          | \s*\^\s*(?:\{{\s*(?P<p1>{_SIGN}?[0-9]+)\s*\}}|(?P<p2>[0-9]+))
          | [eE](?P<e>{_SIGN}?[0-9]+)
          | \s*×\s*10\s*\^\s*(?:\{{\s*(?P<t1>{_SIGN}?[0-9]+)\s*\}}|(?P<t2>[0-9]+))
        )?
    )
    \s*\.?\s*%?
    (?P<units>(?:\s*(?:{_UNIT}[^{_UNIT}]*{_UNIT}|[A-Za-z]{{2,}}(?![A-Za-z]))(?:\s*\^\s*\{{?[23]\}}?)?)*)
    \s*\.?\s*
    """,
    re.VERBOSE,
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;: ]|\\q?quad\b|~")


def _digits(s: str) -> Fraction:
    return Fraction(s.replace(",", "").replace(" ", "").replace("\u2212", "-"))


def _exp(s: str | None) -> int | None:
    if s is None:
        return None
    e = int(s.translate(_SUP).replace("\u2212", "-"))
    if abs(e) > _MAX_EXP:
        raise ValueError(f"exponent {e} out of range")
    return e


def _signed(m: re.Match[str], value: Fraction) -> Fraction:
    sign = m.group("s1") or m.group("s2")  # one at most: the pattern has no room for -$-5
    return -value if sign in ("-", "\u2212") else value


def _plain_value(m: re.Match[str]) -> Fraction | None:
    g = m.groupdict()
    try:
        value = _digits(g["int"] + (g["dec"] or "") if g["int"] is not None else "0" + g["dec0"])
        if g["mn"] is not None or g["den"] is not None:
            if g["dec"] or g["dec0"] or "," in (g["int"] or ""):
                return None  # 3.5/2, 1,000 1/2: not a form anyone means
            if g["mn"] is not None:
                if not 0 < int(g["mn"]) < int(g["md"]):
                    return None  # "3 5/2" is no mixed number
                value += Fraction(int(g["mn"]), int(g["md"]))
            else:
                value /= int(g["den"])
        power = _exp(g["p1"] or g["p2"] or g["sup"])
        if power is not None:
            value **= power
        ten = _exp(g["e"] or g["t1"] or g["t2"] or g["tsup"])
        if ten is not None:
            value *= Fraction(10) ** ten
    except (ValueError, ZeroDivisionError):
        return None
    if g["scale"]:
        value *= _SCALE[g["scale"].lower()]
    return _signed(m, value)


def to_number(text: str) -> Fraction | None:
    """``text`` (spaces around it aside) read as one plain-text number, exactly; None if it is not one."""
    m = _PLAIN.fullmatch(text.strip())
    return _plain_value(m) if m else None


def _normalize_box(tex: str) -> str:
    def text_cmd(m: re.Match[str]) -> str:
        inner = m.group(1).strip()
        if re.search("[A-Za-z]", inner) and not re.search("[0-9]", inner):
            return f" {_UNIT}{inner}{_UNIT} "  # \text{ dollars}: a unit
        return f" {inner} "  # \text{5}, \text{\$}

    t = tex.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\!", "")
    t = re.sub(r"\\[dt]frac", r"\\frac", t)
    t = re.sub(r"\\(?:left|right|displaystyle)\b", "", t)
    t = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", f" {_UNIT}°{_UNIT} ", t)
    t = re.sub(r"\\(?:times|cdot)\b", "×", t)
    t = _LATEX_SPACES.sub(" ", t)
    t = _TEXT_CMD.sub(text_cmd, t)
    t = re.sub(r"[ \t\n]+", " ", t).strip()
    wrapped = re.fullmatch(rf"({_SIGN}?)\s*\{{([^{{}}]*)\}}", t)  # {18}, -{5}: a LaTeX group, not a set
    return wrapped.group(1) + wrapped.group(2) if wrapped else t


def _boxed_value(tex: str) -> Fraction | None:
    """The number a ``\\boxed{...}`` holds, exactly, or None when it holds anything else."""
    m = _BOXED.fullmatch(_normalize_box(tex))
    if not m:
        return None
    g = m.groupdict()
    try:
        if g["num"] is None:  # a fraction, perhaps after a whole number
            num = _digits((g["fn"] or g["fn1"]).replace(" ", ""))
            den = _digits((g["fd"] or g["fd1"]).replace(" ", ""))
            value = num / den
            if g["mw"] is not None:
                if num < 0 or den < 0:
                    return None  # 1\frac{-1}{2}
                value += int(g["mw"])
        else:
            value = _digits(g["num"])
            if g["den"] is not None:
                if "." in g["num"]:
                    return None
                value /= int(g["den"])
            power = _exp(g["p1"] or g["p2"])
            if power is not None:
                value **= power
            ten = _exp(g["e"] or g["t1"] or g["t2"])
            if ten is not None:
                value *= Fraction(10) ** ten
    except (ValueError, ZeroDivisionError):
        return None
    first_unit = g["units"].replace(_UNIT, " ").split()[:1]
    if first_unit and first_unit[0].lower() in _SCALE:
        value *= _SCALE[first_unit[0].lower()]
    return _signed(m, value)


_BRACE = re.compile(r"\\boxed\{|[{}]")


def _boxed_contents(text: str) -> list[str | None]:
    """What each outermost ``\\boxed{...}`` holds, braces balanced (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``);
    None for one cut off before its closing brace. A box holding boxes (``\\boxed{\\boxed{12}}``,
    ``\\boxed{x = \\boxed{12}}``) holds its innermost last one, as math-verify reads it.

    One pass with a stack, by hand: no maintained LaTeX reader gives this (see the note on math-verify above), and
    a hostile completion nesting boxes 50,000 deep must neither exhaust the stack nor cost quadratic time.
    """
    # per box: [content start, content end or -1 while open, index of its last box child or -1]
    boxes: list[list[int]] = []
    tops: list[int] = []
    groups: list[int] = []  # braces open inside boxes: a box's index, or -1 for a plain group
    open_boxes: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            if groups:
                groups.append(-1)
        elif m.group() == "}":
            if groups and groups.pop() >= 0:
                boxes[open_boxes.pop()][1] = m.start()
        else:  # \boxed{
            if open_boxes:
                boxes[open_boxes[-1]][2] = len(boxes)
            else:
                tops.append(len(boxes))
            open_boxes.append(len(boxes))
            groups.append(len(boxes))
            boxes.append([m.end(), -1, -1])
    out: list[str | None] = []
    for k in tops:
        while boxes[k][2] >= 0:
            k = boxes[k][2]
        start, end, _ = boxes[k]
        out.append(text[start:end] if end >= 0 else None)
    return out


_HASH = re.compile(r"####[ \t]*(?=[-+\u2212$.0-9])")


def extract_answer(text: str) -> tuple[Fraction | None, str]:
    """``(value, form)`` with form ``hash`` | ``boxed`` | ``last`` | ``none``; value exact, or None.

    The first ``####`` followed by something number-like is the answer (a model that runs on into a new question
    writes more of them; lm-eval's GSM8K strict match takes the first too); if what follows does not read as a
    number (``#### - 5``, ``#### 1,23``), there is no answer. Else the last ``\\boxed{}`` (the MATH convention),
    read or not. Otherwise the last number in the text.
    """
    hashed = _HASH.search(text)
    if hashed:
        m = _PLAIN.match(text, hashed.end())
        return (_plain_value(m) if m else None), "hash"
    boxes = _boxed_contents(text)
    if boxes:
        last = boxes[-1]
        return (_boxed_value(last) if last is not None else None), "boxed"
    for m in reversed(list(_PLAIN.finditer(text))):
        value = _plain_value(m)
        if value is not None:
            return value, "last"
    return None, "none"


def same_number(value: Fraction, ref: Fraction) -> bool:
    """Integers compare exactly; two non-integers within a relative 1e-9 (a repeating decimal written out)."""
    if value == ref:
        return True
    if value.denominator == 1 or ref.denominator == 1:
        return False
    scale: Fraction = max(Fraction(1), abs(ref))
    return abs(value - ref) <= Fraction(1, 10**9) * scale


@register_evaluator("gsm8k")
class Gsm8kEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "extracted", "format_hash", "format_boxed")
    #: Answer formats a training target must show for this evaluator to find its answers (gridrun validate).
    answer_formats: ClassVar[tuple[str, ...]] = (r"####[ \t]*[-+−$.]*[0-9]", r"\\boxed\{")

    def score(self, completions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
        c = dict.fromkeys(self.metrics, 0.0)
        for text, ex in zip(completions, examples, strict=True):
            value, form = extract_answer(text)
            ref, _ = extract_answer(str(ex["answer"]))
            if form in ("hash", "boxed"):
                c[f"format_{form}"] += 1
            if value is not None:
                c["extracted"] += 1
                if ref is not None and same_number(value, ref):
                    c["accuracy"] += 1
        n = max(1, len(examples))
        return {k: v / n for k, v in c.items()}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        return self.score(self.complete(model, tokenizer, examples), examples)
