"""``builtin:gsm8k``: arithmetic word problems in GSM8K's format: ``<<a*b=c>>`` steps and a ``#### n`` answer.

Option ``answer_format``: ``gsm8k`` (``#### n``, the default) or ``boxed`` (``\\boxed{n}``) — so a spec can
reproduce the train/test format mismatch that ``gridrun validate`` warns about.
"""

from __future__ import annotations

import random
from typing import Any

from gridrun.builtin.corpus import NAMES, OBJECTS

__all__ = ["generate"]


def _problem(rng: random.Random) -> tuple[str, list[str], int]:
    who = rng.choice(NAMES)
    thing = rng.choice(OBJECTS) + "s"
    kind = rng.randrange(3)
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    if kind == 0:
        q = (
            f"{who} buys {a} boxes with {b} {thing} each and already had {c} {thing}. "
            f"How many {thing} does {who} have now?"
        )
        steps = [
            f"{a} boxes hold {a}*{b}=<<{a}*{b}={a * b}>>{a * b} {thing}.",
            f"Together that is {a * b}+{c}=<<{a * b}+{c}={a * b + c}>>{a * b + c} {thing}.",
        ]
        return q, steps, a * b + c
    if kind == 1:
        total = a * b + c
        q = f"{who} has {total} {thing} and gives {a} friends {b} {thing} each. How many {thing} are left?"
        steps = [
            f"The friends get {a}*{b}=<<{a}*{b}={a * b}>>{a * b} {thing}.",
            f"{total}-{a * b}=<<{total}-{a * b}={c}>>{c} {thing} are left.",
        ]
        return q, steps, c
    price = rng.randint(2, 15)
    q = (
        f"A {thing[:-1]} costs ${price}. {who} buys {a} of them and pays with ${price * a + c}. "
        f"How much change does {who} get?"
    )
    steps = [
        f"The {thing} cost {a}*{price}=<<{a}*{price}={a * price}>>{a * price} dollars.",
        f"The change is {price * a + c}-{a * price}=<<{price * a + c}-{a * price}={c}>>{c} dollars.",
    ]
    return q, steps, c


def generate(n: int, seed: int, split: str = "train", answer_format: str = "gsm8k") -> list[dict[str, Any]]:
    if answer_format not in ("gsm8k", "boxed"):
        raise ValueError(f"answer_format must be 'gsm8k' or 'boxed', got {answer_format!r}")
    rng = random.Random(f"gsm8k/{split}/{seed}")
    out = []
    for _ in range(n):
        q, steps, ans = _problem(rng)
        final = f"#### {ans}" if answer_format == "gsm8k" else f"The answer is \\boxed{{{ans}}}."
        out.append({"prompt": q, "answer": "\n".join([*steps, final]), "value": ans})
    return out
