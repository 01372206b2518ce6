"""No candidate text makes ``run_cases`` or the ``code_exec`` evaluator raise: source too deep for the compiler,
NUL bytes, lone surrogates, source over the sandbox's size are each a result (``crash`` or ``syntax_error``) for
that problem, and the rest of the batch is scored. Correct code still passes next to them."""

from __future__ import annotations

import pytest

from evaluators.code_exec import CodeExecEvaluator, extract_function
from evaluators.sandbox import MAX_SOURCE_CHARS, run_cases

GOOD = "def f():\n    return 1\n"

#: hostile candidate text -> the status it must get
HOSTILE = {
    "deep_expression": ("def f():\n    return 1" + "+1" * 3000, "crash"),  # RecursionError in the compiler
    "deep_parentheses": ("def f():\n    return " + "(" * 10_000 + "1" + ")" * 10_000, "syntax_error"),
    "deep_lists": ("def f():\n    return " + "[" * 5000 + "]" * 5000, "syntax_error"),
    "nul_byte": ("def f():\n    return 1\x00\n", "syntax_error"),
    "lone_surrogate": ("def f():\n    return '\ud800'\n", "syntax_error"),
    "five_megabytes": (GOOD + "# " + "x" * (5 << 20) + "\n", "crash"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_run_cases_gives_a_result_for_hostile_source(name: str) -> None:
    code, status = HOSTILE[name]
    r = run_cases(code, "f", [([], 1), ([], 1)])
    assert (r.status, r.passed) == (status, [False, False])
    assert r.detail  # says why, in a few words
    assert len(r.detail) <= 300


def test_source_just_under_the_size_limit_still_runs() -> None:
    code = GOOD + "# " + "x" * (MAX_SOURCE_CHARS - len(GOOD) - 3) + "\n"
    assert len(code) == MAX_SOURCE_CHARS
    r = run_cases(code, "f", [([], 1)])
    assert (r.status, r.passed) == ("ok", [True])


def test_the_evaluator_scores_a_batch_of_hostile_completions() -> None:
    ev = CodeExecEvaluator(isolation="best_effort")
    texts = [f"```python\n{code}\n```" for code, _ in HOSTILE.values()] + [GOOD]
    examples = [{"function": "f", "cases": [[[], 1]], "type": "t"}] * len(texts)
    out = ev.score(texts, examples)
    crashes = sum(status == "crash" for _, status in HOSTILE.values())
    assert out["pass_rate"] == pytest.approx(1 / len(texts))  # only the good one passes
    assert out["crashes"] == pytest.approx(crashes / len(texts))


def test_extraction_never_raises_and_stays_linear() -> None:
    deep = "def f():\n    return 1" + "+1" * 3000
    assert extract_function(deep, "f") == deep + "\n"  # handed on whole: the sandbox calls it a crash
    assert extract_function("def f():\n    return 1\x00\n", "f") is None
    assert extract_function("x" * (MAX_SOURCE_CHARS + 1), "f") is None
    # 20,000 lines of unparsable prose after the function: the parser's error line is skipped to, not every prefix
    chatty = GOOD + "Note (this part is prose\n" * 20_000
    assert extract_function(chatty, "f") == GOOD
