"""Warm start: an earlier study's trials as finished Optuna trials of the new study (``search.warm_start``).

The earlier study is read from its summary (``gridrun_summary.json`` in its experiment folder, or ``summary.json``
on its MLflow parent run): each finished trial's searched values and, at its shipped checkpoint, its task metric
and forgetting. Their values are recomputed for the new study's objective (its penalty, mode and budget), so a
0.5B study can seed a 7B one with another penalty. Values outside the new search space are dropped (Optuna's own
check in ``create_trial``), with one line saying how many.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from gridrun.errors import GridrunError
from gridrun.metrics import penalized

__all__ = ["CONSTRAINT", "check_source", "earlier_trials", "load_earlier", "warm_trials"]

#: The name of the forgetting constraint on Optuna trials (constrained mode): forget/delta - budget, <= 0 feasible.
CONSTRAINT = "forgetting"

log = logging.getLogger("gridrun")


def earlier_trials(spec: Any, searched: dict[str, Any]) -> list[Any] | None:
    """``search.warm_start``'s trials for ``spec``'s study (None when it has none)."""
    if not (spec.search.warm_start and searched):
        return None
    return warm_trials(spec, searched, load_earlier(spec.search.warm_start, spec.tracking.uri))


def check_source(source: str) -> dict[str, Any] | None:
    """What can be checked of ``source`` offline: an experiment folder's summary (returned), else that it can be
    an MLflow run id (None: MLflow has the rest)."""
    from gridrun.report.summary import load_summary

    if Path(source).expanduser().is_dir():
        try:
            return load_summary(source)
        except GridrunError as e:
            raise GridrunError(f"search.warm_start: {e}") from None
    if "/" in source or not source.isalnum():
        raise GridrunError(f"search.warm_start: {source!r} is neither an experiment folder nor an MLflow run id")
    return None


def load_earlier(source: str, tracking_uri: str) -> dict[str, Any]:
    """The earlier study's summary: ``source`` is its experiment folder, else its MLflow parent run id."""
    summary = check_source(source)
    if summary is not None:
        return summary
    from gridrun.tracking import summary_from_mlflow

    try:
        return summary_from_mlflow(tracking_uri, source)
    except GridrunError as e:
        raise GridrunError(f"search.warm_start: {e}") from None


def warm_trials(spec: Any, searched: dict[str, Any], summary: dict[str, Any]) -> list[Any]:
    """The earlier trials as finished ``optuna.trial.FrozenTrial`` s for ``spec``'s study over ``searched``.

    Raises:
        GridrunError: the earlier study did not search every name this one searches.
    """
    import optuna

    rows = [r for r in summary.get("trials", []) if r.get("status") != "ERROR"]
    missing = sorted({k for r in rows for k in searched if k not in r.get("params", {})})
    if missing:
        raise GridrunError(f"search.warm_start: the earlier study did not search {', '.join(missing)}")
    trials, outside, unfinished = [], 0, 0
    for r in rows:
        task, delta = float(r.get("task", math.nan)), float(r.get("forget_delta", math.nan))
        if not (math.isfinite(task) and math.isfinite(delta)):
            unfinished += 1
            continue
        params = {k: r["params"][k] for k in searched}
        values, attrs = _values(spec, task, delta)
        try:
            trials.append(
                optuna.trial.create_trial(params=params, distributions=searched, values=values, system_attrs=attrs)
            )
        except ValueError:  # Optuna checks each value against its distribution: outside the new space
            outside += 1
    if outside or unfinished:
        log.warning(
            "search.warm_start: %d earlier trials seed the sampler; %d dropped (values outside this search space), "
            "%d without a finite task metric and forgetting",
            len(trials),
            outside,
            unfinished,
        )
    return trials


def _values(spec: Any, task: float, delta: float) -> tuple[list[float], dict[str, float]]:
    """What the new study's sampler would have been told of this trial: its value(s) and constraint."""
    o = spec.objective
    if o.mode == "pareto":
        return [task, delta], {}
    if o.mode == "constrained":
        # a FrozenTrial has no set_constraint: the system attribute Trial.set_constraint writes, by Optuna's own key
        from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

        return [task], {f"{_CONSTRAINTS_KEY}:{CONSTRAINT}": delta - spec.forgetting.budget}
    return [penalized(task, delta, o.penalty, o.direction)], {}
