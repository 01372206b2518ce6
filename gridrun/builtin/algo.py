"""``builtin:algo``: algorithmic coding problems with reference solutions, for code-executing evaluation.

Eleven problem types at three difficulty levels. The target is the reference solution (the "teacher trace"
of a distillation study); the evaluator runs the model's function against test cases generated from the
reference. Train and eval draw from different seeds (``split``), so eval problems are not training problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

__all__ = ["PROBLEMS", "generate"]


def _rpn(tokens: list[str]) -> int:
    st: list[int] = []
    for t in tokens:
        if t in "+-*":
            b, a = st.pop(), st.pop()
            st.append(a + b if t == "+" else a - b if t == "-" else a * b)
        else:
            st.append(int(t))
    return st[-1]


def _fizz(n: int) -> list[str]:
    return [
        "FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i)
        for i in range(1, n + 1)
    ]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _bsearch(xs: list[int], target: int) -> int:
    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def _two_sum(xs: list[int], target: int) -> list[int]:
    seen: dict[int, int] = {}
    for i, x in enumerate(xs):
        if target - x in seen:
            return [seen[target - x], i]
        seen[x] = i
    return []


def _max_sub(xs: list[int]) -> int:
    best = cur = xs[0]
    for x in xs[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best


def _dedup(xs: list[int]) -> list[int]:
    out: list[int] = []
    for x in xs:
        if x not in out:
            out.append(x)
    return out


def _balanced(s: str) -> bool:
    pairs, st = {")": "(", "]": "[", "}": "{"}, []
    for ch in s:
        if ch in "([{":
            st.append(ch)
        elif ch in pairs:
            if not st or st.pop() != pairs[ch]:
                return False
    return not st


def _arith(expr: str) -> int:
    return int(eval(expr, {"__builtins__": {}}))


# name → (function name, signature, description, reference source, reference callable, case maker)
def _cases_rpn(rng: random.Random, d: int) -> list[list[Any]]:
    out = []
    for _ in range(4):
        toks = [str(rng.randint(1, 9))]
        for _ in range(d + 1):
            toks += [str(rng.randint(1, 9)), rng.choice("+-*")]
        out.append([toks])
    return out


def _rand_list(rng: random.Random, d: int, lo: int = -9, hi: int = 9) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(2, 4 * d + 2))]


def _expr(rng: random.Random, d: int) -> str:
    e = str(rng.randint(1, 9))
    for _ in range(d + 1):
        e = rng.choice([f"{e} {rng.choice('+-*')} {rng.randint(1, 9)}", f"({e}) * {rng.randint(1, 4)}"])
    return e


PROBLEMS: dict[str, tuple[str, str, str, str, Callable[..., Any], Callable[[random.Random, int], list[list[Any]]]]] = {
    "rpn": (
        "eval_rpn",
        "tokens",
        "evaluates a list of reverse Polish notation tokens with + - * and returns the int",
        "def eval_rpn(tokens):\n    st = []\n    for t in tokens:\n        if t in '+-*':\n            b, a = st.pop(), st.pop()\n            st.append(a + b if t == '+' else a - b if t == '-' else a * b)\n        else:\n            st.append(int(t))\n    return st[-1]\n",
        _rpn,
        _cases_rpn,
    ),
    "fizzbuzz": (
        "fizzbuzz",
        "n",
        "returns the FizzBuzz strings for 1..n",
        "def fizzbuzz(n):\n    return ['FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else str(i) for i in range(1, n + 1)]\n",
        _fizz,
        lambda r, d: [[r.randint(1, 10 * d)] for _ in range(4)],
    ),
    "reverse_string": (
        "reverse_string",
        "s",
        "returns s reversed",
        "def reverse_string(s):\n    return s[::-1]\n",
        lambda s: s[::-1],
        lambda r, d: [["".join(r.choice("abcxyz") for _ in range(r.randint(0, 5 * d)))] for _ in range(4)],
    ),
    "palindrome": (
        "is_palindrome",
        "s",
        "returns True if s reads the same backwards",
        "def is_palindrome(s):\n    return s == s[::-1]\n",
        lambda s: s == s[::-1],
        lambda r, d: [
            [w + w[::-1][r.randint(0, 1) :]]
            if r.random() < 0.5
            else ["".join(r.choice("ab") for _ in range(2 * d + 1))]
            for w in ["".join(r.choice("abc") for _ in range(d + 1)) for _ in range(4)]
        ],
    ),
    "fibonacci": (
        "fibonacci",
        "n",
        "returns the n-th Fibonacci number (fibonacci(0) == 0)",
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        _fib,
        lambda r, d: [[r.randint(0, 10 * d)] for _ in range(4)],
    ),
    "binary_search": (
        "binary_search",
        "xs, target",
        "returns the index of target in the sorted list xs, or -1",
        "def binary_search(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1\n",
        _bsearch,
        lambda r, d: [[xs, r.choice([*xs, 100])] for xs in [sorted(set(_rand_list(r, d, 0, 50))) for _ in range(4)]],
    ),
    "two_sum": (
        "two_sum",
        "xs, target",
        "returns [i, j] (i < j) with xs[i] + xs[j] == target, or []",
        "def two_sum(xs, target):\n    seen = {}\n    for i, x in enumerate(xs):\n        if target - x in seen:\n            return [seen[target - x], i]\n        seen[x] = i\n    return []\n",
        _two_sum,
        lambda r, d: [[xs, xs[0] + xs[-1]] for xs in [_rand_list(r, d) for _ in range(4)]],
    ),
    "max_subarray": (
        "max_subarray",
        "xs",
        "returns the largest sum of a non-empty contiguous sub-list",
        "def max_subarray(xs):\n    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n        best = max(best, cur)\n    return best\n",
        _max_sub,
        lambda r, d: [[_rand_list(r, d)] for _ in range(4)],
    ),
    "remove_duplicates": (
        "remove_duplicates",
        "xs",
        "returns xs without repeated values, first occurrences in order",
        "def remove_duplicates(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out\n",
        _dedup,
        lambda r, d: [[_rand_list(r, d, 0, 4)] for _ in range(4)],
    ),
    "balanced_parens": (
        "balanced",
        "s",
        "returns True if the brackets ()[]{} in s are balanced",
        "def balanced(s):\n    pairs, st = {')': '(', ']': '[', '}': '{'}, []\n    for ch in s:\n        if ch in '([{':\n            st.append(ch)\n        elif ch in pairs:\n            if not st or st.pop() != pairs[ch]:\n                return False\n    return not st\n",
        _balanced,
        lambda r, d: [["".join(r.choice("()[]{}") for _ in range(2 * d + 2))] for _ in range(4)],
    ),
    "arithmetic_expression": (
        "evaluate",
        "expr",
        "evaluates an integer expression with + - * and parentheses",
        "def evaluate(expr):\n    return int(eval(expr, {'__builtins__': {}}))\n",
        _arith,
        lambda r, d: [[_expr(r, d)] for _ in range(4)],
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
        fname, sig, desc, ref, func, cases = PROBLEMS[kind]
        args = cases(rng, d)
        out.append(
            {
                "prompt": f"Write a Python function `{fname}({sig})` that {desc}. Answer with the code only.",
                "answer": ref,
                "function": fname,
                "cases": [[a, func(*a)] for a in args],
                "type": kind,
                "difficulty": d,
            }
        )
    return out
