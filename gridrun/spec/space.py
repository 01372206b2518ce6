"""Search-space distributions in Optuna's short forms, and their conversion to Optuna.

YAML form (the same keys as ``optuna.distributions``)::

    train.lr:          {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
    lora.r:            {type: int, low: 2, high: 16, step: 2}
    data.template:     {type: categorical, choices: ["chat", "Q: {prompt}\\nA: "]}
    lora.dropout:      0.05          # anything else is a fixed value

This is the only module that knows about distribution objects; ``to_yaml`` round-trips them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CategoricalDist",
    "Distribution",
    "FixedValue",
    "FloatDist",
    "IntDist",
    "parse_distribution",
    "to_optuna",
    "to_yaml",
]


@dataclass(frozen=True)
class FloatDist:
    """Uniform or log-uniform float in [low, high] (optionally on a grid of ``step``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def extremes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]

    def to_yaml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class IntDist:
    """Integer in [low, high] on a grid of ``step`` (or log-uniform)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def extremes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]

    def to_yaml(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.step != 1:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return d


@dataclass(frozen=True)
class CategoricalDist:
    """One of ``choices``."""

    choices: tuple[Any, ...]

    def extremes(self) -> list[tuple[str, Any]]:
        return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]

    def to_yaml(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class FixedValue:
    """A value that is not searched but still set per trial (``lora.dropout: 0.0`` inside ``search.space``)."""

    value: Any

    def extremes(self) -> list[tuple[str, Any]]:
        return [("value", self.value)]

    def to_yaml(self) -> Any:
        return self.value


Distribution = FloatDist | IntDist | CategoricalDist | FixedValue

_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


def _num(d: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in d:
        raise ValueError(f"{where}: '{key}' is required for type {d['type']}")
    v = d[key]
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    if kind is int:
        ok = ok and float(v).is_integer()
    if not ok or not math.isfinite(float(v)):
        raise ValueError(f"{where}.{key}: expected a {'whole ' if kind is int else ''}number, got {v!r}")
    return kind(v)


def parse_distribution(raw: Any, where: str = "search.space") -> Distribution:
    """Turn one YAML value into a distribution; a non-mapping (or a mapping without ``type``) is fixed.

    Raises:
        ValueError: one line naming ``where`` and the bad value.
    """
    if isinstance(raw, FloatDist | IntDist | CategoricalDist | FixedValue):
        return raw
    if not isinstance(raw, dict) or "type" not in raw:
        return FixedValue(raw)
    kind = raw["type"]
    if not isinstance(kind, str) or kind not in _KEYS:
        raise ValueError(f"{where}.type: unknown distribution {kind!r}; known: float, int, categorical")
    unknown = set(raw) - _KEYS[kind]
    if unknown:
        raise ValueError(
            f"{where}: unknown key '{sorted(unknown)[0]}' for type {kind}; known keys: {', '.join(sorted(_KEYS[kind]))}"
        )
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        return CategoricalDist(tuple(choices))
    num = float if kind == "float" else int
    low, high = _num(raw, "low", where, num), _num(raw, "high", where, num)
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: expected true or false, got {log!r}")
    if low > high:
        raise ValueError(f"{where}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise ValueError(f"{where}.low: log scale needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        step = _num(raw, "step", where, num)
        if step <= 0:
            raise ValueError(f"{where}.step: must be > 0, got {step}")
        if log:
            raise ValueError(f"{where}: step and log cannot be combined")
    if kind == "float":
        return FloatDist(low, high, log, step)
    return IntDist(low, high, step if step is not None else 1, log)


def to_yaml(space: dict[str, Distribution]) -> dict[str, Any]:
    """The inverse of :func:`parse_distribution` for a whole space."""
    return {k: v.to_yaml() for k, v in space.items()}


def to_optuna(space: dict[str, Distribution]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a space into Optuna distributions (searched) and fixed values (set on every trial)."""
    import optuna.distributions as od

    searched: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for k, d in space.items():
        if isinstance(d, FixedValue):
            fixed[k] = d.value
        elif isinstance(d, FloatDist):
            searched[k] = od.FloatDistribution(d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDist):
            searched[k] = od.IntDistribution(d.low, d.high, log=d.log, step=d.step)
        else:
            searched[k] = od.CategoricalDistribution(list(d.choices))
    return searched, fixed
