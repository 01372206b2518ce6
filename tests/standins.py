"""Offline stand-ins for the hub inputs of the real studies, in hub layout, with the real datasets' columns.

Each builder writes one dataset under ``root/<hub id>`` the way a snapshot of the hub repository lays it out:
a configuration (subset) is a sub-folder, a split is a file named ``<split>-00000-of-00001.parquet``, and the
columns (names, nesting, Arrow types) are those of the real dataset. The contents come from the built-in
corpus's world of facts (``gridrun.builtin.corpus``), which the tiny model was pretrained on, so its scores on
them are above chance. ``hub_model`` copies the tiny model folder (a Qwen2 saved with ``save_pretrained``) as a
hub model stand-in. ``standin_spec`` turns a real study YAML into one that reads only stand-ins and runs on a
CPU in seconds.

Everything is deterministic (fixed seeds) and takes well under a second per dataset.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from gridrun.builtin import chat, corpus
from gridrun.builtin import math as math_tasks
from gridrun.builtin.corpus import ANIMALS, CAPITALS, COLORS, DAYS, MONTHS, NAMES, OPPOSITES, PLACES

__all__ = [
    "HUB_DATASETS",
    "HUB_MODELS",
    "ai2_arc",
    "gsm8k",
    "hellaswag",
    "hub_model",
    "squad",
    "standin",
    "standin_spec",
    "twix",
    "wikitext",
    "winogrande",
    "write_split",
]

#: How many items an MC stand-in holds by default (the truth check scores all of them).
MC_ITEMS = 300

_STR = pa.string()


def write_split(folder: Path, split: str, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    """One split as the hub stores it: ``folder/<split>-00000-of-00001.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


def hub_model(root: Path, tiny_model: Path, hub_id: str = "Qwen/Qwen2.5-0.5B-Instruct") -> Path:
    """The tiny model's ``save_pretrained`` folder copied to ``root/<hub id>`` (gridrun's build notes left out)."""
    target = root / hub_id
    if not (target / "config.json").is_file():
        shutil.copytree(tiny_model, target, ignore=shutil.ignore_patterns("gridrun_recipe.json"), dirs_exist_ok=True)
    return target


# ---------------------------------------------------------------------------------------------------------------
# task data
# ---------------------------------------------------------------------------------------------------------------


def gsm8k(root: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """``openai/gsm8k``: subset ``main``, splits train/test, ``question`` and ``answer`` (steps, then ``#### n``)."""
    folder = root / "openai" / "gsm8k"
    schema = pa.schema([("question", _STR), ("answer", _STR)])
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [{"question": r["prompt"], "answer": r["answer"]} for r in math_tasks.generate(n, 0, split=split)]
        write_split(folder / "main", split, rows, schema)
    return folder


_SQUAD_FACTS = {
    "city": ("{n} lives in {v}.", "Where does {n} live?", sorted(CAPITALS.values())),
    "pet": ("{n} has a {v}.", "What animal does {n} have?", sorted(ANIMALS)),
    "color": ("The favourite color of {n} is {v}.", "What is the favourite color of {n}?", sorted(COLORS.values())),
    "day": ("{n} visits the market every {v}.", "On which day does {n} visit the market?", DAYS),
}
_SQUAD_KEYS = sorted(_SQUAD_FACTS)


def squad(root: Path, n_train: int = 48, n_validation: int = 16) -> Path:
    """``rajpurkar/squad``: subset ``plain_text``, splits train/validation; ``id``, ``title``, ``context``,
    ``question``, ``answers`` {``text``, ``answer_start``} (several questions per context, spans of it)."""
    folder = root / "rajpurkar" / "squad"
    answers = pa.struct([("text", pa.list_(_STR)), ("answer_start", pa.list_(pa.int32()))])
    schema = pa.schema([("id", _STR), ("title", _STR), ("context", _STR), ("question", _STR), ("answers", answers)])
    for split, n in (("train", n_train), ("validation", n_validation)):
        rng = random.Random(f"standin/squad/{split}")
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            people = rng.sample(NAMES, 3)
            facts = [(p, k, rng.choice(_SQUAD_FACTS[k][2])) for p in people for k in rng.sample(_SQUAD_KEYS, 2)]
            rng.shuffle(facts)
            context = " ".join(_SQUAD_FACTS[k][0].format(n=p, v=v) for p, k, v in facts)
            title = "People_of_" + rng.choice(PLACES).capitalize()
            for p, k, v in rng.sample(facts, 4):
                sentence = _SQUAD_FACTS[k][0].format(n=p, v=v)
                start = context.index(sentence) + sentence.index(v)
                rows.append(
                    {
                        "id": f"{rng.getrandbits(96):024x}",
                        "title": title,
                        "context": context,
                        "question": _SQUAD_FACTS[k][1].format(n=p),
                        "answers": {"text": [v], "answer_start": [start]},
                    }
                )
        write_split(folder / "plain_text", split, rows[:n], schema)
    return folder


def twix(root: Path, n: int = 48) -> Path:
    """``t-tech/T-Wix`` (no subset; files under ``data/``): one split, train, with a ``messages`` column (a list of
    {role, content}: a system prompt, a question, the assistant's answer)."""
    folder = root / "t-tech" / "T-Wix"
    message = pa.struct([("content", _STR), ("role", _STR)])
    schema = pa.schema([("messages", pa.list_(message))])
    rows = chat.generate(n, 0, split="train")
    write_split(folder / "data", "train", [{"messages": r["messages"]} for r in rows], schema)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# the forgetting probe
# ---------------------------------------------------------------------------------------------------------------

_WIKI_TITLES = ["Capitals of the world", "Animals", "Colours", "The calendar", "Stories", "Numbers", "Records"]


def wikitext(root: Path, n_docs: int = 40) -> Path:
    """``Salesforce/wikitext``: subset ``wikitext-2-raw-v1``, split test, one ``text`` column of lines as the
    raw dump has them (empty lines, `` = Title = `` headings, paragraphs), written from the built-in corpus's
    general English (its held-out probe documents, chat transcripts left out)."""
    folder = root / "Salesforce" / "wikitext"
    docs = [d for d in corpus.probe_texts(4 * n_docs, seed=30_011) if "<|im_start|>" not in d][:n_docs]
    lines: list[str] = []
    for i, doc in enumerate(docs):
        if i % 5 == 0:
            lines += ["", f" = {_WIKI_TITLES[(i // 5) % len(_WIKI_TITLES)]} = \n", ""]
        lines.append(f" {doc} \n")
    write_split(folder / "wikitext-2-raw-v1", "test", [{"text": t} for t in lines], pa.schema([("text", _STR)]))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# multiple-choice benchmarks
# ---------------------------------------------------------------------------------------------------------------


def _options(rng: random.Random, gold: str, pool: list[str], k: int) -> tuple[list[str], int]:
    """``gold`` and ``k - 1`` other values of ``pool``, shuffled; the gold's index."""
    choices = [gold, *rng.sample(sorted({v for v in pool if v != gold}), k - 1)]
    rng.shuffle(choices)
    return choices, choices.index(gold)


def _hellaswag_row(rng: random.Random, i: int) -> dict[str, Any]:
    """A HellaSwag-shaped item: an activity label, a context split into ``ctx_a``/``ctx_b``, four endings."""
    who = rng.choice(NAMES)
    kind = i % 6
    wikihow = kind == 5
    if kind == 0:
        country = rng.choice(sorted(CAPITALS))
        label, ctx_a, ctx_b = "Geography", f"{who} looked at a map. The capital of {country} is", ""
        endings, gold = _options(rng, CAPITALS[country], list(CAPITALS.values()), 4)
        endings = [e + "." for e in endings]
    elif kind == 1:
        animal = rng.choice(sorted(ANIMALS))
        label, ctx_a, ctx_b = "Pets and animals", f"{who} went to the farm.", f"the {animal}"
        endings, gold = _options(rng, ANIMALS[animal], list(ANIMALS.values()), 4)
        endings = [e + " at night." for e in endings]
    elif kind == 2:
        thing = rng.choice(sorted(COLORS))
        label, ctx_a, ctx_b = "Nature", f"{who} went to the {rng.choice(PLACES)}.", f"the {thing} is"
        endings, gold = _options(rng, COLORS[thing], list(COLORS.values()), 4)
        endings = [e + "." for e in endings]
    elif kind == 3:
        word = rng.choice(sorted(OPPOSITES))
        label, ctx_a, ctx_b = "Language", f"{who} asked a question. The opposite of {word} is", ""
        endings, gold = _options(rng, OPPOSITES[word], list(OPPOSITES.values()), 4)
        endings = [e + "." for e in endings]
    elif kind == 4:
        m = rng.randrange(12)
        label, ctx_a, ctx_b = "Calendar", f"{who} read the calendar.", f"after {MONTHS[m]} comes"
        endings, gold = _options(rng, MONTHS[(m + 1) % 12], MONTHS, 4)
        endings = [e + "." for e in endings]
    else:  # WikiHow items carry [header]/[title]/[step]/[substeps] markers that lm-eval's clean-up removes
        d = rng.randrange(7)
        label = "Education and communications"
        ctx_a = f"[header] How to say the days in order [title] Start with {DAYS[d]}. [step] After {DAYS[d]} comes"
        ctx_b = ""
        endings, gold = _options(rng, DAYS[(d + 1) % 7], DAYS, 4)
        endings = [f"{e}. [substeps] Say  it again." if j % 2 else f"{e}." for j, e in enumerate(endings)]
    return {
        "ind": 10 * i + 4,
        "activity_label": label,
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "ctx": f"{ctx_a} {ctx_b}".strip(),
        "endings": endings,
        "source_id": f"wikihow~{1000 + i}" if wikihow else f"activitynet~v_{rng.getrandbits(44):011x}",
        "split": "val",
        "split_type": "zeroshot" if i % 2 else "indomain",
        "label": str(gold),
    }


def hellaswag(root: Path, n: int = MC_ITEMS) -> Path:
    """``Rowan/hellaswag`` (no subset; files under ``data/``): splits train (a few) and validation; ``ind``,
    ``activity_label``, ``ctx_a``, ``ctx_b``, ``ctx``, ``endings`` (4), ``source_id``, ``split``, ``split_type``,
    ``label`` (the gold index as text)."""
    folder = root / "Rowan" / "hellaswag"
    schema = pa.schema(
        [
            ("ind", pa.int32()),
            ("activity_label", _STR),
            ("ctx_a", _STR),
            ("ctx_b", _STR),
            ("ctx", _STR),
            ("endings", pa.list_(_STR)),
            ("source_id", _STR),
            ("split", _STR),
            ("split_type", _STR),
            ("label", _STR),
        ]
    )
    for split, k in (("train", 8), ("validation", n)):
        rng = random.Random(f"standin/hellaswag/{split}")
        write_split(folder / "data", split, [_hellaswag_row(rng, i) for i in range(k)], schema)
    return folder


def _arc_row(rng: random.Random, i: int, prefix: str) -> dict[str, Any]:
    """An ARC-shaped item: mostly A-D labels; some 1-4 labels, some three or five choices, as the real sets have.
    Most choices are whole answers in the corpus's words ("The capital of Peru is Lima."), which the tiny model
    ranks well above chance; every fourth item has bare choices ("Lima"), as most real ARC items do."""
    kind = i % 5
    if kind == 0:
        country = rng.choice(sorted(CAPITALS))
        question, gold, pool = f"What is the capital of {country}?", CAPITALS[country], list(CAPITALS.values())
        say = f"The capital of {country} is {{}}."
    elif kind == 1:
        animal = rng.choice(sorted(ANIMALS))
        question, gold, pool = f"What sound does a {animal} make?", ANIMALS[animal], list(ANIMALS.values())
        say = f"A {animal} {{}}."
    elif kind == 2:
        thing = rng.choice(sorted(COLORS))
        question, gold, pool = f"What color is the {thing}?", COLORS[thing], list(COLORS.values())
        say = f"The {thing} is {{}}."
    elif kind == 3:
        word = rng.choice(sorted(OPPOSITES))
        question, gold, pool = f"What is the opposite of {word}?", OPPOSITES[word], list(OPPOSITES.values())
        say = f"The opposite of {word} is {{}}."
    else:
        x, y = rng.randrange(20), rng.randrange(20)
        question, gold, pool = f"What is {x} plus {y}?", str(x + y), [str(v) for v in range(40)]
        say = f"{x} plus {y} is {{}}."
    k = 3 if i % 17 == 0 else 5 if i % 13 == 0 else 4
    texts, answer = _options(rng, gold, pool, k)
    if i % 4 != 3:
        texts = [say.format(t) for t in texts]
    labels = [str(j + 1) for j in range(k)] if i % 11 == 0 else ["ABCDE"[j] for j in range(k)]
    return {
        "id": f"{prefix}_{7_000_000 + 37 * i}",
        "question": question,
        "choices": {"text": texts, "label": labels},
        "answerKey": labels[answer],
    }


def ai2_arc(root: Path, n: int = MC_ITEMS) -> Path:
    """``allenai/ai2_arc``: subsets ``ARC-Challenge`` and ``ARC-Easy``, splits train and validation (a few each)
    and test; ``id``, ``question``,
    ``choices`` {``text``, ``label``}, ``answerKey``."""
    folder = root / "allenai" / "ai2_arc"
    choices = pa.struct([("text", pa.list_(_STR)), ("label", pa.list_(_STR))])
    schema = pa.schema([("id", _STR), ("question", _STR), ("choices", choices), ("answerKey", _STR)])
    for subset, prefix in (("ARC-Challenge", "Mercury"), ("ARC-Easy", "MCAS")):
        for split, k in (("train", 8), ("validation", 8), ("test", n)):
            rng = random.Random(f"standin/{subset}/{split}")
            write_split(folder / subset, split, [_arc_row(rng, i, prefix) for i in range(k)], schema)
    return folder


def _winogrande_row(rng: random.Random, i: int) -> dict[str, Any]:
    """A WinoGrande-shaped item: a sentence with one ``_``, two options for it, the right one as "1" or "2"."""
    kind = i % 5
    if kind == 0:
        gold, other = rng.sample(sorted(CAPITALS), 2)
        sentence = f"{rng.choice(NAMES)} said that the capital of _ is {CAPITALS[gold]}."
    elif kind == 1:
        gold, other = rng.sample(sorted(ANIMALS), 2)
        sentence = f"The _ {ANIMALS[gold]} at night."
    elif kind == 2:
        gold, other = rng.sample(sorted(COLORS), 2)
        sentence = f"The _ is {COLORS[gold]}."
    elif kind == 3:
        gold, other = rng.sample(sorted(OPPOSITES), 2)
        sentence = f"The opposite of _ is {OPPOSITES[gold]}."
    else:
        d, e = rng.sample(range(7), 2)
        gold, other = DAYS[d], DAYS[e]
        sentence = f"After _ comes {DAYS[(d + 1) % 7]}."
    first = rng.random() < 0.5
    return {
        "sentence": sentence,
        "option1": gold if first else other,
        "option2": other if first else gold,
        "answer": "1" if first else "2",
    }


def winogrande(root: Path, n: int = MC_ITEMS) -> Path:
    """``allenai/winogrande``: subset ``winogrande_xl``, splits train (a few) and validation; ``sentence``, ``option1``,
    ``option2``, ``answer`` ("1" or "2")."""
    folder = root / "allenai" / "winogrande"
    schema = pa.schema([("sentence", _STR), ("option1", _STR), ("option2", _STR), ("answer", _STR)])
    for split, k in (("train", 8), ("validation", n)):
        rng = random.Random(f"standin/winogrande/{split}")
        write_split(folder / "winogrande_xl", split, [_winogrande_row(rng, i) for i in range(k)], schema)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# a real study, offline
# ---------------------------------------------------------------------------------------------------------------

#: Hub dataset id → its builder (``builder(root)`` returns the folder).
HUB_DATASETS: dict[str, Callable[[Path], Path]] = {
    "openai/gsm8k": gsm8k,
    "rajpurkar/squad": squad,
    "t-tech/T-Wix": twix,
    "Salesforce/wikitext": wikitext,
    "Rowan/hellaswag": hellaswag,
    "allenai/ai2_arc": ai2_arc,
    "allenai/winogrande": winogrande,
}
#: Hub model ids the real studies name; each stand-in is the tiny model.
HUB_MODELS = ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct")


def standin(hub_id: str, root: Path) -> Path:
    """The stand-in folder for ``hub_id`` under ``root``, built on first use."""
    if hub_id in HUB_MODELS:
        from gridrun.builtin.tiny_model import ensure_tiny_general

        return hub_model(root, ensure_tiny_general(), hub_id)
    if hub_id not in HUB_DATASETS:
        raise KeyError(f"no stand-in for {hub_id!r}; known: {', '.join([*HUB_MODELS, *HUB_DATASETS])}")
    folder = root / hub_id
    return folder if folder.is_dir() else HUB_DATASETS[hub_id](root)


#: Sizes that make a real study run on a CPU in seconds (the stand-in data sets hold a few dozen rows).
_SHRINK = {
    "data": {"train_size": 32, "eval_size": 4, "max_seq_len": 160},
    "train": {"batch_size": 8, "grad_accum": 1, "epochs": 1, "eval_every": 2},
    "evaluate": {"max_new_tokens": 16, "batch_size": 8},
    "forgetting": {"samples": 8, "seq_len": 64},
    "resources": {"cpu": 1, "gpu": 0},
}
_MC_LIMIT = 16


def standin_spec(yaml_path: Path, root: Path) -> dict[str, Any]:
    """A real study's YAML with every hub id swapped for its stand-in under ``root`` and shrunk to CPU seconds.

    What the study measures is kept: its evaluators and their options, the objective, the searched space, the
    probe's subset/split/field, the benchmarks (``limit`` cut to a few items), nf4 quantization (bitsandbytes
    runs it on a CPU with float32 compute). Sizes, resources (1 CPU, no GPU), trials (2), the ASHA grace period
    and tracking (inside ``root``) change.
    """
    from forgetting.data import BENCHMARKS

    spec = yaml.safe_load(Path(yaml_path).read_text())

    def hub(name: str) -> str:
        return name if name.startswith("builtin:") else str(standin(name, root))

    spec["model"]["name"] = hub(spec["model"]["name"])
    spec["model"]["compute_dtype"] = "float32"
    data = spec["data"]
    for key in ("task", "eval"):
        if data.get(key):
            data[key] = hub(data[key])
    fg = spec["forgetting"]
    fg["probe"] = hub(fg["probe"])
    fg["mc"] = [{"benchmark": mc} if isinstance(mc, str) else mc for mc in fg.get("mc") or []]
    for mc in fg["mc"]:
        bench = BENCHMARKS[mc["benchmark"]]
        mc["source"] = hub(mc.get("source") or bench.hub_id)
        # named, as a local folder gets no default subset: see test_mc_reference.py's xfail on ai2_arc
        mc["subset"] = mc.get("subset") or bench.subset
        mc["limit"] = min(mc.get("limit", _MC_LIMIT), _MC_LIMIT)
    for section, values in _SHRINK.items():
        spec.setdefault(section, {}).update(values)
    if (spec["data"].get("options") or {}).get("questions_per_context"):
        # squad's sequential format puts every question of a context in one sample: at 160 tokens none fits, and
        # training drops what does not fit (never trains a cut answer), so give it room for the stand-in's contexts
        spec["data"]["max_seq_len"] = 512
    spec["search"]["num_trials"] = 2
    if spec.get("scheduler", {}).get("type", "asha") == "asha":
        spec.setdefault("scheduler", {})["grace_period"] = 16
    spec["tracking"] = {"uri": f"sqlite:///{root}/mlruns.db", "storage": str(root / "gridrun_results")}
    return spec
