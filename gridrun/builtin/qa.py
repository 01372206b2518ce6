"""``builtin:squad``: extractive QA over short generated contexts, in two prompt formats.

Each context describes a few people (city, pet, color, day); questions ask for one fact and the answer is a
span of the context. ``prompt_format``: ``batch`` (one question per example) or ``sequential`` (all questions
of a context in one example, answered as numbered lines). Records carry ``answers`` (gold strings per
question) and ``context_id`` for the squad evaluator.
"""

from __future__ import annotations

import random
from typing import Any

from gridrun.builtin.corpus import ANIMALS, CAPITALS, COLORS, DAYS, NAMES

__all__ = ["generate"]

_FACTS = {
    "city": ("{n} lives in {v}.", "Where does {n} live?", lambda r: r.choice(list(CAPITALS.values()))),
    "pet": ("{n} has a {v}.", "What animal does {n} have?", lambda r: r.choice(list(ANIMALS))),
    "color": (
        "The favourite color of {n} is {v}.",
        "What is the favourite color of {n}?",
        lambda r: r.choice(sorted(set(COLORS.values()))),
    ),
    "day": ("{n} visits the market every {v}.", "On which day does {n} visit the market?", lambda r: r.choice(DAYS)),
}


def generate(
    n: int, seed: int, split: str = "train", prompt_format: str = "batch", questions_per_context: int = 3
) -> list[dict[str, Any]]:
    """``n`` examples (batch: n questions; sequential: n contexts)."""
    if prompt_format not in ("batch", "sequential"):
        raise ValueError(f"prompt_format must be 'batch' or 'sequential', got {prompt_format!r}")
    if questions_per_context < 1:
        raise ValueError("questions_per_context must be >= 1")
    rng = random.Random(f"squad/{split}/{seed}")
    out: list[dict[str, Any]] = []
    ctx_id = 0
    while len(out) < n:
        people = rng.sample(NAMES, 3)
        facts = []
        for person in people:
            for key in rng.sample(list(_FACTS), 2):
                facts.append((person, key, _FACTS[key][2](rng)))
        rng.shuffle(facts)
        context = " ".join(_FACTS[k][0].format(n=p, v=v) for p, k, v in facts)
        asked = rng.sample(facts, min(questions_per_context, len(facts)))
        qs = [(_FACTS[k][1].format(n=p), v) for p, k, v in asked]
        if prompt_format == "batch":
            for q, a in qs:
                if len(out) < n:
                    out.append(
                        {
                            "prompt": f"Context: {context}\nQuestion: {q}\nAnswer with a span of the context.",
                            "answer": a,
                            "answers": [[a]],
                            "format": "batch",
                            "context_id": ctx_id,
                        }
                    )
        else:
            numbered = "\n".join(f"{i + 1}. {q}" for i, (q, _) in enumerate(qs))
            out.append(
                {
                    "prompt": f"Context: {context}\nQuestions:\n{numbered}\nAnswer each on its own numbered line.",
                    "answer": "\n".join(f"{i + 1}. {a}" for i, (_, a) in enumerate(qs)),
                    "answers": [[a] for _, a in qs],
                    "format": "sequential",
                    "context_id": ctx_id,
                }
            )
        ctx_id += 1
    return out
