"""``builtin:algo``: algorithmic coding problems with reference solutions, for code-executing evaluation.

Eleven problem types at three difficulty levels. The target is the reference solution (the "teacher trace"
of a distillation study); the evaluator runs the model's function against test cases generated from the
reference. Each prompt shows a worked example at its difficulty; train and eval draw from different seeds
(``split``), so eval prompts and cases are not training ones.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

from gridrun.builtin.algo_refs import (
    balanced,
    binary_search,
    eval_rpn,
    evaluate,
    fibonacci,
    fizzbuzz,
    is_palindrome,
    max_subarray,
    remove_duplicates,
    reverse_string,
    two_sum,
)

__all__ = ["PROBLEMS", "generate"]


def _source(fn: Callable[..., Any]) -> str:
    return "\n".join(line.split("  # noqa")[0] for line in inspect.getsource(fn).splitlines()) + "\n"


def _rand_list(rng: random.Random, d: int, lo: int = -9, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(2, 4 * d + 2))]


def _word(rng: random.Random, letters: str, n: int) -> str:
    return "".join(rng.choice(letters) for _ in range(n))


def _rpn_case(rng: random.Random, d: int) -> list[Any]:
    toks = [str(rng.randint(1, 9))]
    for _ in range(d + 1):
        toks += [str(rng.randint(1, 9)), rng.choice("+-*")]
    return [toks]


def _expr(rng: random.Random, d: int) -> str:
    e = str(rng.randint(1, 9))
    for _ in range(d + 1):
        e = rng.choice([f"{e} {rng.choice('+-*')} {rng.randint(1, 9)}", f"({e}) * {rng.randint(1, 4)}"])
    return e


def _palindrome_case(rng: random.Random, d: int) -> list[Any]:
    w = _word(rng, "abc", d + 1)
    return [w + w[::-1][rng.randint(0, 1) :]] if rng.random() < 0.5 else [_word(rng, "ab", 2 * d + 1)]


def _search_case(rng: random.Random, d: int) -> list[Any]:
    xs = sorted(set(_rand_list(rng, d, 0, 50)))
    return [xs, rng.choice([*xs, 100])]


def _two_sum_case(rng: random.Random, d: int) -> list[Any]:
    xs = _rand_list(rng, d)
    return [xs, xs[0] + xs[-1]]


CaseMaker = Callable[[random.Random, int], list[Any]]
#: type → (reference function, argument names, what it must do, one test input for a difficulty)
PROBLEMS: dict[str, tuple[Callable[..., Any], str, str, CaseMaker]] = {
    "rpn": (eval_rpn, "tokens", "evaluates reverse Polish notation tokens with + - * and returns an int", _rpn_case),
    "fizzbuzz": (fizzbuzz, "n", "returns the FizzBuzz strings for 1..n", lambda r, d: [r.randint(1, 10 * d)]),
    "reverse_string": (
        reverse_string,
        "s",
        "returns s reversed",
        lambda r, d: [_word(r, "abcxyz", r.randint(0, 5 * d))],
    ),
    "palindrome": (is_palindrome, "s", "returns True if s reads the same backwards", _palindrome_case),
    "fibonacci": (
        fibonacci,
        "n",
        "returns the n-th Fibonacci number (fibonacci(0) == 0)",
        lambda r, d: [r.randint(0, 10 * d)],
    ),
    "binary_search": (binary_search, "xs, target", "returns the index of target in sorted xs, or -1", _search_case),
    "two_sum": (two_sum, "xs, target", "returns [i, j] (i < j) with xs[i] + xs[j] == target, or []", _two_sum_case),
    "max_subarray": (
        max_subarray,
        "xs",
        "returns the largest sum of a non-empty contiguous sub-list",
        lambda r, d: [_rand_list(r, d)],
    ),
    "remove_duplicates": (
        remove_duplicates,
        "xs",
        "returns xs without repeats, first occurrences in order",
        lambda r, d: [_rand_list(r, d, 0, 4)],
    ),
    "balanced_parens": (
        balanced,
        "s",
        "returns True if the brackets ()[]{} in s are balanced",
        lambda r, d: [_word(r, "()[]{}", 2 * d + 2)],
    ),
    "arithmetic_expression": (
        evaluate,
        "expr",
        "evaluates an integer expression with + - * and parentheses",
        lambda r, d: [_expr(r, d)],
    ),
}


def generate(
    n: int, seed: int, split: str = "train", types: list[str] | None = None, difficulties: list[int] | None = None
) -> list[dict[str, Any]]:
    """``n`` problems: prompt, answer (reference solution), function, cases, type, difficulty."""
    kinds = types or list(PROBLEMS)
    unknown = [k for k in kinds if k not in PROBLEMS]
    if unknown:
        raise ValueError(f"types: unknown problem type {unknown[0]!r}; known: {', '.join(PROBLEMS)}")
    levels = difficulties or [1, 2, 3]
    rng = random.Random(f"algo/{split}/{seed}")
    out = []
    for i in range(n):
        kind, d = kinds[i % len(kinds)], rng.choice(levels)
        func, sig, desc, make = PROBLEMS[kind]
        args = [make(rng, d) for _ in range(4)]
        # A worked example of this instance's difficulty (not one of its test cases) makes each prompt its own
        # problem: eval prompts are not training prompts, and harder levels show harder inputs.
        example = make(rng, d)
        call = f"{func.__name__}({', '.join(repr(a) for a in example)})"
        out.append(
            {
                "prompt": f"Write a Python function `{func.__name__}({sig})` that {desc}. "
                f"For example, {call} returns {func(*example)!r}. Answer with the code only.",
                "answer": _source(func),
                "function": func.__name__,
                "cases": [[a, func(*a)] for a in args],
                "type": kind,
                "difficulty": d,
            }
        )
    return out
