"""``builtin:json-format``: strict JSON-only output tasks, generated offline and deterministically.

Each example is an instruction plus field values; the target is exactly one JSON object with the requested
keys and nothing else. Hard negatives tempt the model into extra text (a request for a comment, an example
that shows two objects, a chatty preamble); fix-bad-output examples show a broken output (prose around the
object, a duplicated object) and ask for the clean one. Train and eval use different seeds.
"""

from __future__ import annotations

import json
import random
from typing import Any

__all__ = ["generate"]

_FIELDS: dict[str, list[Any]] = {
    "name": ["Ana", "Ben", "Carla", "Dev", "Elif", "Finn", "Gita", "Hugo", "Ines", "Jon", "Kira", "Liam"],
    "city": ["Paris", "Rome", "Lima", "Oslo", "Cairo", "Tokyo", "Madrid", "Berlin", "Dublin", "Vienna"],
    "age": list(range(18, 80)),
    "color": ["red", "blue", "green", "white", "black", "yellow", "purple", "orange"],
    "pet": ["cat", "dog", "owl", "frog", "horse", "duck"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "score": list(range(0, 101)),
    "active": [True, False],
}

_ASK = [
    "Return only a JSON object with the keys {keys}.",
    "Output JSON only, with keys {keys}.",
    "Give a single JSON object with {keys} and nothing else.",
    "Respond with one JSON object containing {keys}.",
]
_HARD = [
    "Return a JSON object with the keys {keys}. Also add a short comment about the person.",
    "Explain your answer, then give a JSON object with {keys}.",
    "Example output: {example} {example}\nNow give the JSON object with {keys}.",
    "Sure! Start with a friendly sentence and then the JSON with {keys}.",
]
_BAD_WRAP = [
    "Sure! Here is the JSON: {obj}",
    "{obj}\nI hope this helps.",
    "{obj} {obj}",
    "```json\n{obj}\n```",
    "The answer is {obj} and that is all.",
]


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _example(rng: random.Random, hard_negative_prob: float, fix_bad_output_prob: float) -> dict[str, Any]:
    keys = rng.sample(list(_FIELDS), rng.randint(2, 4))
    obj = {k: rng.choice(_FIELDS[k]) for k in keys}
    facts = "\n".join(f"{k}: {json.dumps(v) if isinstance(v, bool) else v}" for k, v in obj.items())
    key_list = ", ".join(keys)
    r = rng.random()
    if r < fix_bad_output_prob:
        bad = rng.choice(_BAD_WRAP).format(obj=_dump(obj))
        prompt = f"Fix this output so that it is only one JSON object with the keys {key_list}:\n{bad}"
        kind = "fix_bad_output"
    elif r < fix_bad_output_prob + hard_negative_prob:
        other = {k: rng.choice(_FIELDS[k]) for k in keys}
        prompt = rng.choice(_HARD).format(keys=key_list, example=_dump(other)) + "\n" + facts
        kind = "hard_negative"
    else:
        prompt = rng.choice(_ASK).format(keys=key_list) + "\n" + facts
        kind = "plain"
    return {"prompt": prompt, "answer": _dump(obj), "keys": keys, "kind": kind}


def generate(
    n: int,
    seed: int,
    split: str = "train",
    hard_negative_prob: float = 0.3,
    fix_bad_output_prob: float = 0.15,
) -> list[dict[str, Any]]:
    """``n`` examples; the same (n, seed, split, options) always give the same list.

    Args:
        n: number of examples.
        seed: experiment seed; train and eval splits derive different streams from it.
        split: "train" or "eval".
        hard_negative_prob: share of prompts that tempt the model into extra text.
        fix_bad_output_prob: share of prompts that show a broken output to be cleaned up.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    for name, p in (("hard_negative_prob", hard_negative_prob), ("fix_bad_output_prob", fix_bad_output_prob)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if hard_negative_prob + fix_bad_output_prob > 1:
        raise ValueError("hard_negative_prob + fix_bad_output_prob must be <= 1")
    rng = random.Random(f"json-format/{split}/{seed}")
    return [_example(rng, hard_negative_prob, fix_bad_output_prob) for _ in range(n)]
