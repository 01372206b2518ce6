"""Did tuning help? Each trial's task metric against the base model's (``task/<metric>_base``, reported by every
eval round), the ``base`` rows of the trials table, ``objective.min_gain`` ranking, and the closing lines that
say in words when no trial beat the base."""

from __future__ import annotations

import math
from typing import Any

from trainables.base_scores import eval_paths

__all__ = ["add_gains", "base_rows", "best_vs_base", "gain_lines", "rank_key"]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def add_gains(rows: list[dict[str, Any]], metric: str, direction: str, min_gain: float | None) -> None:
    """Set each row's ``base`` (its arm's base score on ``metric``), ``gain`` (task − base) and ``beats_base``
    (improves on the base by more than 0, or by at least ``min_gain`` when set; None when the base is unknown)."""
    sign = 1.0 if direction == "max" else -1.0
    for r in rows:
        base = _num((r.get("metrics") or {}).get(f"{metric}_base"))
        r["base"] = base
        r["gain"] = r["task"] - base
        if math.isnan(r["gain"]):
            r["beats_base"] = None
        else:
            better = sign * r["gain"]
            r["beats_base"] = better >= min_gain if min_gain is not None else better > 0


def rank_key(row: dict[str, Any], min_gain: float | None) -> tuple[int, float]:
    """Sort key, best first: with ``min_gain``, every trial that beats its base by that much ranks first."""
    obj = row["objective"]
    tier = 0 if min_gain is None or row.get("beats_base") else 1
    return tier, -obj if math.isfinite(obj) else math.inf


def base_rows(
    rows: list[dict[str, Any]], arms: list[dict[str, Any]] | None = None, metric: str = ""
) -> list[dict[str, Any]]:
    """One ``base`` row per eval arm (the searched values that change the eval), with its base score on
    ``metric``: from ``arms`` (the launch's ``base_scores``: values and scores) when given, so an arm no trial
    ran still shows its base, else from the trials' reported ``<metric>_base``."""
    if arms:
        return [{"params": a["values"], "task": _num(a["scores"].get(metric))} for a in arms]
    keys = sorted({k for r in rows for k in r["params"]})
    arm_paths = eval_paths(keys)
    seen: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        if math.isnan(_num(r.get("base"))):
            continue
        arm = tuple(str(r["params"].get(p)) for p in arm_paths)
        if arm not in seen:
            seen[arm] = {"params": {p: r["params"].get(p) for p in arm_paths}, "task": r["base"]}
    return list(seen.values())


def best_vs_base(best: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(task metric, best trial's value, its base's)`` for every task metric the base was scored on."""
    m = best.get("metrics") or {}
    out = []
    for k in sorted(m):
        if k.startswith("task/") and k.endswith("_base"):
            name = k[: -len("_base")]
            if name in m:
                out.append((name, _num(m[name]), _num(m[k])))
    return out


def gain_lines(summary: dict[str, Any], fmt: Any) -> list[str]:
    """The closing lines: the best trial's task metrics against base, and in words whether tuning helped."""
    metric = summary["objective_metric"]
    best = summary.get("best")
    ok = [r for r in summary["trials"] if r["status"] != "ERROR" and r.get("beats_base") is not None]
    if not best or not ok:
        return []
    out = []
    pairs = best_vs_base(best)
    if pairs:
        out.append(
            "best trial vs base: " + ", ".join(f"{k} {fmt(v)} (base {fmt(b)}, gain {fmt(v - b)})" for k, v, b in pairs)
        )
    direction = summary.get("direction", "max")
    sign = 1.0 if direction == "max" else -1.0
    if not any(sign * r["gain"] > 0 for r in ok):
        out.append(f"NO trial beat the base model on {metric}: tuning did not help the task (see the base row)")
    elif best.get("beats_base") is not None and sign * best["gain"] < 0:
        out.append(
            f"the best trial by objective scores BELOW the base model on {metric}: "
            f"{fmt(best['task'])} vs base {fmt(best['base'])}"
        )
    min_gain = summary.get("min_gain")
    if min_gain is not None and not any(r["beats_base"] for r in ok):
        out.append(f"no trial beat the base model by objective.min_gain {fmt(float(min_gain))} on {metric}")
    return out
