"""A built-in general-text corpus, generated deterministically from a small world of facts.

The tiny model is pretrained on it, so it has general ability to lose: world facts ("The capital of Peru is
Lima."), simple arithmetic, sequences, short stories and chat-formatted question answering. The forgetting
probe is drawn from the same distribution with a different seed (held out), and the multiple-choice items
for later studies reuse the same facts. Nothing here touches torch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

__all__ = ["CAPITALS", "general_documents", "mc_items", "probe_texts"]

CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Portugal": "Lisbon",
    "Peru": "Lima",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Chile": "Santiago",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "India": "Delhi",
    "Cuba": "Havana",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Sweden": "Stockholm",
    "Mexico": "Mexico City",
}
ANIMALS = {
    "cat": "meows",
    "dog": "barks",
    "cow": "moos",
    "duck": "quacks",
    "lion": "roars",
    "sheep": "bleats",
    "horse": "neighs",
    "owl": "hoots",
    "bee": "buzzes",
    "frog": "croaks",
}
COLORS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "sun": "yellow",
    "orange": "orange",
    "plum": "purple",
    "sand": "brown",
    "cloud": "grey",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "day": "night",
    "happy": "sad",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "light": "dark",
}
NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Elif",
    "Finn",
    "Gita",
    "Hugo",
    "Ines",
    "Jon",
    "Kira",
    "Liam",
    "Mara",
    "Nico",
    "Omar",
    "Pia",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Vera",
    "Wen",
    "Yara",
    "Zoe",
]
OBJECTS = ["ball", "book", "kite", "cup", "hat", "box", "key", "map", "lamp", "coin", "shell", "drum"]
PLACES = ["park", "river", "garden", "market", "forest", "beach", "school", "library", "hill", "farm"]
VERBS = [
    ("found", "find"),
    ("lost", "lose"),
    ("painted", "paint"),
    ("carried", "carry"),
    ("hid", "hide"),
    ("washed", "wash"),
    ("opened", "open"),
    ("dropped", "drop"),
]


def _fact(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        c = rng.choice(list(CAPITALS))
        return rng.choice([f"The capital of {c} is {CAPITALS[c]}.", f"{CAPITALS[c]} is the capital of {c}."])
    if kind == 1:
        a = rng.choice(list(ANIMALS))
        return rng.choice([f"A {a} {ANIMALS[a]}.", f"The {a} {ANIMALS[a]} at night.", f"Every {a} {ANIMALS[a]}."])
    if kind == 2:
        t = rng.choice(list(COLORS))
        return rng.choice([f"The {t} is {COLORS[t]}.", f"The color of the {t} is {COLORS[t]}."])
    if kind == 3:
        w = rng.choice(list(OPPOSITES))
        return rng.choice(
            [
                f"The opposite of {w} is {OPPOSITES[w]}.",
                f"{w.capitalize()} is the opposite of {OPPOSITES[w]}.",
            ]
        )
    if kind == 4:
        i = rng.randrange(7)
        return f"After {DAYS[i]} comes {DAYS[(i + 1) % 7]}."
    i = rng.randrange(12)
    return f"After {MONTHS[i]} comes {MONTHS[(i + 1) % 12]}."


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randrange(7), rng.randrange(6)
    if rng.random() < 0.5:
        return f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
    x, y = rng.randrange(50), rng.randrange(50)
    return f"{x} + {y} = {x + y}."


def _sequence(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        s = rng.randrange(5)
        return ", ".join(NUMBERS[s : s + rng.randrange(4, 8)]).capitalize() + "."
    if kind == 1:
        s = rng.randrange(7)
        return ", ".join(DAYS[(s + k) % 7] for k in range(rng.randrange(3, 7))) + "."
    s = rng.randrange(30)
    step = rng.choice([1, 2, 5, 10])
    return " ".join(str(s + k * step) for k in range(rng.randrange(4, 8))) + "."


def _story(rng: random.Random) -> str:
    who, friend = rng.sample(NAMES, 2)
    obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
    past, _ = rng.choice(VERBS)
    color = rng.choice(list(COLORS.values()))
    day = rng.choice(DAYS)
    lines = [
        f"On {day}, {who} went to the {place}.",
        f"{who} {past} a {color} {obj} there.",
        rng.choice([f"{friend} asked to see the {obj}.", f"{friend} was at the {place} too."]),
        rng.choice([f"{who} gave the {obj} to {friend}.", f"{who} and {friend} took the {obj} home."]),
        rng.choice(["They were happy.", "It was a good day.", f"The {obj} was {color}."]),
    ]
    return " ".join(lines)


def _qa_pair(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        c = rng.choice(list(CAPITALS))
        return f"What is the capital of {c}?", f"The capital of {c} is {CAPITALS[c]}."
    if kind == 1:
        a = rng.choice(list(ANIMALS))
        return f"What sound does a {a} make?", f"A {a} {ANIMALS[a]}."
    if kind == 2:
        t = rng.choice(list(COLORS))
        return f"What color is the {t}?", f"The {t} is {COLORS[t]}."
    if kind == 3:
        w = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}."
    x, y = rng.randrange(20), rng.randrange(20)
    return f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}."


def _record(rng: random.Random) -> str:
    """Structured data inside prose, as real pretraining text has: the model knows JSON, not JSON-only."""
    who = rng.choice(NAMES)
    obj: dict[str, object] = {"name": who}
    for key in rng.sample(["city", "age", "color", "pet", "day"], rng.randint(1, 3)):
        obj[key] = {
            "city": lambda: rng.choice(list(CAPITALS.values())),
            "age": lambda: rng.randrange(18, 80),
            "color": lambda: rng.choice(list(COLORS.values())),
            "pet": lambda: rng.choice(list(ANIMALS)),
            "day": lambda: rng.choice(DAYS),
        }[key]()
    text = json.dumps(obj)
    return rng.choice(
        [
            f"Here is the record for {who}: {text}",
            f"The form for {who} was saved as {text} on {rng.choice(DAYS)}.",
            f"{text} This record describes {who}.",
            f"Data: {text}\nThat is all we know about {who}.",
        ]
    )


def _chat(rng: random.Random) -> str:
    turns = []
    for _ in range(rng.randrange(1, 3)):
        q, a = _qa_pair(rng)
        turns.append(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n")
    return "".join(turns)


def general_documents(n: int, seed: int) -> Iterator[str]:
    """``n`` general-text documents, the same for the same seed (pretraining uses seed 0)."""
    rng = random.Random(seed)
    makers = [_fact, _arithmetic, _sequence]
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            yield _story(rng)
        elif r < 0.45:
            yield _chat(rng)
        elif r < 0.55:
            yield " ".join(_record(rng) for _ in range(rng.randrange(1, 3)))
        else:
            yield " ".join(rng.choice(makers)(rng) for _ in range(rng.randrange(3, 7)))


def probe_texts(n: int = 400, seed: int = 10_007) -> list[str]:
    """Held-out general text for the forgetting probe (a seed the pretraining never uses)."""
    return list(general_documents(n, seed))


def mc_items(n: int = 48, seed: int = 20_011) -> list[dict[str, object]]:
    """General-knowledge multiple-choice items from the corpus's facts (question, choices, answer index)."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    makers = [
        (lambda k: f"The capital of {k} is", CAPITALS),
        (lambda k: f"The {k} is", COLORS),
        (lambda k: f"The opposite of {k} is", OPPOSITES),
        (lambda k: f"A {k}", ANIMALS),
    ]
    for i in range(n):
        ask, table = makers[i % len(makers)]
        key = rng.choice(sorted(table))
        gold = table[key]
        wrong = rng.sample(sorted({v for v in table.values() if v != gold}), 3)
        choices = [gold, *wrong]
        rng.shuffle(choices)
        out.append({"question": ask(key), "choices": choices, "answer": choices.index(gold)})
    return out
