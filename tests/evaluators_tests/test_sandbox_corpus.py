"""Correct code passes in the sandbox: reference solutions for every ``builtin:algo`` type, plus alternatives
written the way people write them, with common standard-library modules (collections incl. namedtuple,
itertools, functools, re, heapq, bisect, math, dataclasses, typing, string, copy, fractions, decimal, shutil,
tempfile, operator, ast, pickle), dataclasses under ``from __future__ import annotations``, and tuples where the case
stores a JSON list. Every one must pass every generated case, with the audit hook on: a sandbox that
crashes correct code under-reports the study's pass rates."""

from __future__ import annotations

import json
import sys
import types

import pytest

from evaluators.sandbox import run_cases
from gridrun.builtin.algo import PROBLEMS, generate

ALTERNATIVES: dict[str, list[str]] = {
    "rpn": [
        """
import operator
from collections import deque, namedtuple
from typing import List

Op = namedtuple("Op", "symbol apply")
OPS = {o.symbol: o for o in (Op("+", operator.add), Op("-", operator.sub), Op("*", operator.mul))}


def eval_rpn(tokens: List[str]) -> int:
    stack: deque = deque()
    for t in tokens:
        if t in OPS:
            b, a = stack.pop(), stack.pop()
            stack.append(OPS[t].apply(a, b))
        else:
            stack.append(int(t))
    return stack[-1]
""",
        """
from dataclasses import dataclass, field


@dataclass
class Stack:
    items: list = field(default_factory=list)

    def push(self, x):
        self.items.append(x)

    def pop(self):
        return self.items.pop()


def eval_rpn(tokens):
    st = Stack()
    for t in tokens:
        if t.lstrip("-").isdigit():
            st.push(int(t))
        else:
            b, a = st.pop(), st.pop()
            st.push({"+": a + b, "-": a - b, "*": a * b}[t])
    return st.items[-1]
""",
    ],
    "fizzbuzz": [
        """
from itertools import cycle, islice


def fizzbuzz(n):
    fizz, buzz = cycle(["", "", "Fizz"]), cycle(["", "", "", "", "Buzz"])
    return [(f + b) or str(i) for i, f, b in zip(range(1, n + 1), fizz, buzz)]
""",
        """
import string
from functools import lru_cache


@lru_cache(maxsize=None)
def word(i: int) -> str:
    return string.Template("${f}${b}").substitute(f="Fizz" * (i % 3 == 0), b="Buzz" * (i % 5 == 0)) or str(i)


def fizzbuzz(n: int) -> list[str]:
    return [word(i) for i in range(1, n + 1)]
""",
    ],
    "reverse_string": [
        """
import copy
from functools import reduce


def reverse_string(s):
    chars = copy.copy(list(s))
    chars.reverse()
    assert "".join(chars) == reduce(lambda acc, c: c + acc, s, "")
    return "".join(chars)
""",
        """
import os
import shutil
import tempfile


def reverse_string(s):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "in.txt"), "w") as f:
            f.write(s)
        shutil.copyfile(os.path.join(d, "in.txt"), os.path.join(d, "out.txt"))
        with open(os.path.join(d, "out.txt")) as f:
            return "".join(reversed(f.read()))
""",
    ],
    "palindrome": [
        """
from collections import deque


def is_palindrome(s):
    d = deque(s)
    while len(d) > 1:
        if d.popleft() != d.pop():
            return False
    return True
""",
        """
def is_palindrome(s: str) -> bool:
    return all(a == b for a, b in zip(s, reversed(s)))
""",
    ],
    "fibonacci": [
        """
import sys
from functools import lru_cache

sys.setrecursionlimit(10_000)


@lru_cache(maxsize=None)
def fibonacci(n):
    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)
""",
        """
from decimal import Decimal, getcontext
from fractions import Fraction


def fibonacci(n):
    getcontext().prec = 60
    phi = (1 + Decimal(5).sqrt()) / 2
    psi = (1 - Decimal(5).sqrt()) / 2
    binet = int(((phi**n - psi**n) / Decimal(5).sqrt()).to_integral_value())
    a, b = Fraction(0), Fraction(1)
    for _ in range(n):
        a, b = b, a + b
    assert a == binet
    return int(a)
""",
        """
import math


def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    # a is a Fibonacci number: 5a^2 + 4 or 5a^2 - 4 is a perfect square
    assert math.isqrt(5 * a * a + 4) ** 2 == 5 * a * a + 4 or math.isqrt(5 * a * a - 4) ** 2 == 5 * a * a - 4
    return a
""",
    ],
    "binary_search": [
        """
from bisect import bisect_left


def binary_search(xs, target):
    i = bisect_left(xs, target)
    return i if i < len(xs) and xs[i] == target else -1
""",
        """
from typing import Sequence


def binary_search(xs: Sequence[int], target: int) -> int:
    def go(lo: int, hi: int) -> int:
        if lo > hi:
            return -1
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        return go(mid + 1, hi) if xs[mid] < target else go(lo, mid - 1)

    return go(0, len(xs) - 1)
""",
    ],
    "two_sum": [
        """
import bisect
from collections import defaultdict


def two_sum(xs, target):
    where = defaultdict(list)
    for i, x in enumerate(xs):
        where[x].append(i)
    for j, x in enumerate(xs):
        before = where.get(target - x, [])
        k = bisect.bisect_left(before, j)
        if k:
            return [before[k - 1], j]
    return []
""",
        # a tuple, where the case stores the JSON list [i, j]
        """
def two_sum(xs, target):
    seen = {}
    for j, x in enumerate(xs):
        if target - x in seen:
            return seen[target - x], j
        seen[x] = j
    return ()
""",
    ],
    "max_subarray": [
        """
import math
from itertools import accumulate


def max_subarray(xs):
    best, lowest = -math.inf, 0
    for p in accumulate(xs):
        best = max(best, p - lowest)
        lowest = min(lowest, p)
    return int(best)
""",
        """
from functools import reduce


def max_subarray(xs):
    def step(acc, x):
        cur, best = acc
        cur = max(x, cur + x)
        return cur, max(best, cur)

    return reduce(step, xs[1:], (xs[0], xs[0]))[1]
""",
    ],
    "remove_duplicates": [
        """
def remove_duplicates(xs):
    return list(dict.fromkeys(xs))
""",
        """
import heapq
from collections import Counter, OrderedDict


def remove_duplicates(xs):
    first = OrderedDict()
    for i, x in enumerate(xs):
        first.setdefault(x, i)
    heap = [(i, x) for x, i in first.items()]
    heapq.heapify(heap)
    out = [heapq.heappop(heap)[1] for _ in range(len(heap))]
    assert sum(Counter(out).values()) == len(set(xs))
    return out
""",
        # string annotations: dataclasses and get_type_hints look the candidate's module up in sys.modules; its
        # own classes pickle (by module and name); the result is a tuple
        """
from __future__ import annotations

import pickle
import typing
from dataclasses import dataclass, field


@dataclass
class Seen:
    order: list[int] = field(default_factory=list)
    members: set[int] = field(default_factory=set)

    def add(self, x: int) -> None:
        if x not in self.members:
            self.members.add(x)
            self.order.append(x)


def remove_duplicates(xs: list[int]) -> tuple[int, ...]:
    seen = Seen()
    for x in xs:
        seen.add(x)
    assert typing.get_type_hints(Seen)["order"] == list[int]
    return tuple(pickle.loads(pickle.dumps(seen)).order)
""",
    ],
    "balanced_parens": [
        """
import re

PAIR = re.compile(r"\\(\\)|\\[\\]|\\{\\}")


def balanced(s):
    s = re.sub(r"[^()\\[\\]{}]", "", s)
    while PAIR.search(s):
        s = PAIR.sub("", s)
    return not s
""",
        """
from collections import deque
from typing import Deque

CLOSE = dict(zip(")]}", "([{"))


def balanced(s: str) -> bool:
    stack: Deque[str] = deque()
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif ch in CLOSE:
            if not stack or stack.pop() != CLOSE[ch]:
                return False
    return not stack
""",
    ],
    "arithmetic_expression": [
        """
import ast
import operator

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expr):
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(node)

    return ev(ast.parse(expr, mode="eval"))
""",
        """
import re
from fractions import Fraction
from typing import NamedTuple


class Token(NamedTuple):
    kind: str
    text: str


def tokens(expr):
    return [Token("num" if t.isdigit() else "op", t) for t in re.findall(r"\\d+|[-+*()]", expr)]


def evaluate(expr):
    toks, pos = tokens(expr), 0

    def peek():
        return toks[pos].text if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom():
        t = take()
        if t.text == "(":
            v = add()
            take()
            return v
        if t.text == "-":
            return -atom()
        return Fraction(int(t.text))

    def mul():
        v = atom()
        while peek() == "*":
            take()
            v *= atom()
        return v

    def add():
        v = mul()
        while peek() in ("+", "-"):
            v = v + mul() if take().text == "+" else v - mul()
        return v

    return int(add())
""",
    ],
}


def _cases(kind: str) -> list[tuple[list, object]]:
    """Every case of 12 eval problems of this type, all difficulties."""
    return [(list(a), e) for ex in generate(12, seed=0, split="eval", types=[kind]) for a, e in ex["cases"]]


def _corpus() -> list[tuple[str, str, str]]:
    out = []
    for kind in PROBLEMS:
        reference = generate(1, seed=0, types=[kind])[0]["answer"]
        out.append((kind, "reference", reference))
        out += [(kind, f"alt{i}", code) for i, code in enumerate(ALTERNATIVES[kind])]
    return out


CORPUS = _corpus()


def test_the_corpus_covers_every_type_and_the_modules() -> None:
    assert {k for k, _, _ in CORPUS} == set(PROBLEMS)
    text = "\n".join(code for _, _, code in CORPUS)
    for module in ("collections", "itertools", "functools", "re", "heapq", "bisect", "math", "dataclasses",
                   "typing", "string", "copy", "fractions", "decimal", "shutil"):  # fmt: skip
        assert f"import {module}" in text or f"from {module} import" in text, module
    assert "namedtuple" in text and "NamedTuple" in text


@pytest.mark.parametrize(("kind", "name", "code"), CORPUS, ids=[f"{k}-{n}" for k, n, _ in CORPUS])
def test_correct_code_passes_in_the_sandbox(kind: str, name: str, code: str, monkeypatch) -> None:
    func = PROBLEMS[kind][0].__name__
    cases = _cases(kind)
    # our own corpus, checked outside the sandbox first: as a module of its own, its results as JSON holds them
    module = types.ModuleType(f"corpus_{kind}_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{kind}-{name}", "exec"), module.__dict__)
    fn = module.__dict__[func]
    assert [json.loads(json.dumps(fn(*a))) == e for a, e in cases] == [True] * len(cases), "the corpus is wrong"
    r = run_cases(code, func, cases)
    assert (r.status, r.detail, r.passed) == ("ok", "", [True] * len(cases))
