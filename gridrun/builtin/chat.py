"""``builtin:chat-style``: chat SFT data (``messages`` records) that pulls a model away from its general style.

A system prompt asks for terse, upper-case answers in a fixed "ticket" format; the questions are ordinary
general-knowledge questions. Learning the style is the task; the forgetting probe and the multiple-choice set
measure what the model loses on the way (the forgetting study's situation in miniature).
"""

from __future__ import annotations

import random
from typing import Any

from gridrun.builtin.corpus import _qa_pair

__all__ = ["generate"]

SYSTEM = "You are TicketBot. Answer in upper case, prefixed with the ticket number, in one line."


def generate(n: int, seed: int, split: str = "train", turns: int = 1) -> list[dict[str, Any]]:
    """``n`` conversations of ``turns`` user/assistant exchanges under a system prompt (field ``messages``)."""
    if turns < 1:
        raise ValueError("turns must be >= 1")
    rng = random.Random(f"chat-style/{split}/{seed}")
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": SYSTEM}]
        for _ in range(turns):
            q, a = _qa_pair(rng)
            msgs += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"T-{rng.randint(100, 999)}: {a.upper()}"},
            ]
        out.append({"messages": msgs})
    return out
