"""What a trial's numbers mean: the forgetting-penalized objective, Pareto helpers, the metric namespaces and
why a trial stopped (pure functions, no heavy imports)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "METRIC_NAMES",
    "METRIC_PREFIXES",
    "feasible",
    "forget_delta",
    "namespaced_metrics",
    "pareto_front",
    "penalized",
    "stop_reason",
]

#: Result keys that are metrics (numeric values under these prefixes, plus the bare names): what MLflow,
#: checkpoint records and adapter cards hold.
METRIC_PREFIXES = ("train/", "task/", "forget/", "perf/", "data/")
METRIC_NAMES = ("objective", "samples_seen", "step", "epoch", "progress")


def namespaced_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a trial result under the DESIGN metric namespaces."""
    return {
        k: float(v)
        for k, v in result.items()
        if (k.startswith(METRIC_PREFIXES) or k in METRIC_NAMES)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }


def stop_reason(reasons: Mapping[str, str], trial_id: str, last_result: Mapping[str, Any] | None) -> str:
    """Why a trial ended: the reason a stopper or ASHA recorded, else ``completed`` if it trained to the end,
    else ``stopped`` (ended early by something that records no reason, e.g. the experiment's end)."""
    recorded = reasons.get(trial_id)
    if recorded:
        return recorded
    return "completed" if (last_result or {}).get("progress", 0) >= 1 else "stopped"


def forget_delta(probe_loss: float, base_loss: float) -> float:
    """Relative rise of the probe loss over the base model's: 0.1 means 10% worse, negative means better."""
    if base_loss <= 0 or not math.isfinite(base_loss):
        raise ValueError(f"base probe loss must be a positive number, got {base_loss}")
    return (probe_loss - base_loss) / base_loss


def penalized(task: float, delta: float, penalty: float, direction: str = "max") -> float:
    """``task - penalty * max(0, delta)``; a lower-is-better task metric is negated first.

    Improving on the base model's probe (delta < 0) earns nothing: the objective rewards the task, and only
    charges for forgetting.
    """
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    score = task if direction == "max" else -task
    return score - penalty * max(0.0, delta)


def feasible(delta: float, budget: float) -> bool:
    """Whether a trial's forgetting keeps to the budget (constrained mode): an unknown (NaN) forgetting does not."""
    return math.isfinite(delta) and delta <= budget


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (task ↑, forgetting ↓) that no other point dominates, in input order.

    Points with a non-finite coordinate are never on the front.
    """
    ok = [i for i, (t, f) in enumerate(points) if math.isfinite(t) and math.isfinite(f)]
    front = []
    for i in ok:
        ti, fi = points[i]
        dominated = any(
            (points[j][0] >= ti and points[j][1] <= fi) and (points[j][0] > ti or points[j][1] < fi) for j in ok
        )
        if not dominated:
            front.append(i)
    return front
