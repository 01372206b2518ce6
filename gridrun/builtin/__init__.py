"""Embedded defaults, named ``builtin:<name>`` in specs: models, task generators and general-text probes.

Each kind is a small name → callable table; unknown names raise with the list of known ones. Importing this
package imports no torch (the model builder imports it when it runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridrun.builtin import algo, chat, corpus, json_format, qa, tiny_model
from gridrun.builtin import math as math_tasks
from gridrun.errors import GridrunError

__all__ = ["MODELS", "PREFIX", "PROBES", "TASKS", "builtin_name", "resolve_model", "task_generator"]

PREFIX = "builtin:"

#: name → function returning a local model folder.
MODELS: dict[str, Callable[[], Path]] = {"tiny-general": tiny_model.ensure_tiny_general}
#: name → generator(n, seed, split, **options) returning prompt/answer records.
TASKS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "json-format": json_format.generate,
    "squad": qa.generate,
    "gsm8k": math_tasks.generate,
    "algo": algo.generate,
    "chat-style": chat.generate,
}
#: name → function returning a list of general-text documents.
PROBES: dict[str, Callable[[], list[str]]] = {"general-probe": corpus.probe_texts}
#: name → function returning multiple-choice items (question, choices, answer index).
MC_SETS: dict[str, Callable[[], list[dict[str, Any]]]] = {"general-mc": corpus.mc_items}


def builtin_name(source: str) -> str | None:
    """``"builtin:x"`` → ``"x"``; anything else → None."""
    return source[len(PREFIX) :] if source.startswith(PREFIX) else None


def _lookup(table: dict[str, Any], name: str, what: str, field: str) -> Any:
    if name not in table:
        known = ", ".join(PREFIX + k for k in table)
        raise GridrunError(f"{field}: unknown {what} '{PREFIX}{name}'; known: {known}")
    return table[name]


def resolve_model(name: str) -> str:
    """A model name as ``from_pretrained`` takes it: builtin models are built (once) and given as a folder."""
    short = builtin_name(name)
    if short is None:
        return name
    return str(_lookup(MODELS, short, "builtin model", "model.name")())


def task_generator(name: str, field: str = "data.task") -> Callable[..., list[dict[str, Any]]]:
    return _lookup(TASKS, name, "builtin task", field)


def probe_source(name: str) -> Callable[[], list[str]]:
    return _lookup(PROBES, name, "builtin probe", "forgetting.probe")


def mc_source(name: str) -> Callable[[], list[dict[str, Any]]]:
    return _lookup(MC_SETS, name, "builtin multiple-choice set", "forgetting.mc")


def check_names(model: str, task: str, probe: str, eval_source: str | None = None, mc: str | None = None) -> None:
    """Fail fast on unknown builtin names (nothing is built or generated)."""
    for value, table, what, field in (
        (model, MODELS, "builtin model", "model.name"),
        (task, TASKS, "builtin task", "data.task"),
        (eval_source or "", TASKS, "builtin task", "data.eval"),
        (probe, PROBES, "builtin probe", "forgetting.probe"),
        (mc or "", MC_SETS, "builtin multiple-choice set", "forgetting.mc"),
    ):
        short = builtin_name(value)
        if short is not None:
            _lookup(table, short, what, field)
