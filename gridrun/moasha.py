"""Multi-objective ASHA (MOASHA): early stopping on (task ↑, forgetting ↓) at once, over samples seen.

Syne Tune's MOASHA (Schmucker et al., 2021) is the maintained implementation of this rule, but it is a Syne Tune
scheduler (its own trial, backend and tuner types, pandas and dill among its dependencies), not a Ray Tune
``TrialScheduler``: adapting it would take more code than the rule itself, so the rule is written here, small.

The rule, at each rung (``grace_period * reduction_factor**k`` samples, as Ray's ASHA places them): the points
recorded there so far and the newcomer are ordered by non-dominated sorting (front 0 first, NSGA-II's fast
non-dominated sort), within a front by crowding distance (the most isolated first, NSGA-II's tie-break; MOASHA's
paper tie-breaks by an epsilon-net, a close cousin), then by arrival (the newcomer first, so a tie continues as it
does in ASHA). The newcomer continues if it is among the first ``ceil(n / reduction_factor)`` of the ``n`` points.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

__all__ = ["MOASHA", "crowding_distance", "mo_order", "nondominated_ranks", "promote"]

Point = tuple[float, float]  # (task, forgetting) with the task already signed so that higher is better


def _dominates(a: Point, b: Point) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Front index of each point (0: no point dominates it). A point with a non-finite coordinate is put in a
    front after all others."""
    ok = [i for i, p in enumerate(points) if all(math.isfinite(x) for x in p)]
    ranks = [len(points)] * len(points)
    left, front = set(ok), 0
    while left:
        current = {i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            ranks[i] = front
        left -= current
        front += 1
    return ranks


def crowding_distance(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point within its set: boundary points infinite, a coordinate all points
    share left out."""
    n = len(points)
    dist = [0.0] * n
    for k in range(2):
        order = sorted(range(n), key=lambda i: points[i][k])
        lo, hi = points[order[0]][k], points[order[-1]][k]
        if hi == lo:  # a coordinate all points share says nothing about crowding (as Optuna's NSGA-II has it)
            continue
        dist[order[0]] = dist[order[-1]] = math.inf
        for a, i, b in zip(order, order[1:], order[2:], strict=False):
            dist[i] += (points[b][k] - points[a][k]) / (hi - lo)
    return dist


def mo_order(points: Sequence[Point]) -> list[int]:
    """Indices of ``points`` best first: by front, then crowding distance within it (larger first), then index."""
    ranks = nondominated_ranks(points)
    crowd = [0.0] * len(points)
    for front in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == front]
        for i, d in zip(members, crowding_distance([points[i] for i in members]), strict=True):
            crowd[i] = d
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def promote(recorded: Sequence[Point], new: Point, reduction_factor: float) -> bool:
    """Whether a trial reaching a rung with ``new`` continues, given the points ``recorded`` there before it."""
    points = [new, *recorded]
    keep = math.ceil(len(points) / reduction_factor)
    return mo_order(points).index(0) < keep


class MOASHA(FIFOScheduler):
    """Ray Tune scheduler: asynchronous successive halving on two metrics (one bracket), recording why it stopped
    a trial in ``reasons`` as ``gridrun.stopping.RecordingASHA`` does.

    Args:
        reasons: trial id → why it stopped (shared with the stoppers and the summary).
        time_attr: the result key that counts progress (samples seen).
        metrics: (task metric, forgetting metric).
        modes: ("max" or "min") for each.
        max_t: stop every trial here.
        grace_period: the first rung.
        reduction_factor: keep 1 / this at each rung.
    """

    def __init__(
        self,
        reasons: MutableMapping[str, str],
        time_attr: str,
        metrics: tuple[str, str],
        modes: tuple[str, str],
        max_t: float,
        grace_period: float,
        reduction_factor: float,
    ) -> None:
        super().__init__()
        self.reasons, self._time_attr, self._metrics, self._max_t = reasons, time_attr, metrics, max_t
        self._signs = tuple(1.0 if m == "max" else -1.0 for m in modes)
        self._rf = reduction_factor
        n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self._rungs: list[tuple[float, dict[str, Point]]] = [
            (grace_period * reduction_factor**k, {}) for k in reversed(range(n))
        ]

    def get_state(self) -> dict[str, Any]:
        """The rungs' recorded points (``reasons`` is shared, and kept by ``stopping.StoppingState``): Tune does not
        snapshot its scheduler, so a resumed search gets them back through that callback."""
        return {k: v for k, v in self.__dict__.items() if k != "reasons"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _point(self, result: dict[str, Any]) -> Point:
        # the second metric is minimized in the point's own sense: (task ↑, forgetting ↓)
        return (self._signs[0] * float(result[self._metrics[0]]), -self._signs[1] * float(result[self._metrics[1]]))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self._time_attr not in result or any(m not in result for m in self._metrics):
            return TrialScheduler.CONTINUE
        t = result[self._time_attr]
        if t >= self._max_t:
            return TrialScheduler.STOP
        for milestone, recorded in self._rungs:  # the highest rung reached and not yet recorded, as ASHA does
            if t < milestone or trial.trial_id in recorded:
                continue
            point = self._point(result)
            go = promote(list(recorded.values()), point, self._rf)
            recorded[trial.trial_id] = point
            if not go:
                self.reasons.setdefault(
                    trial.trial_id,
                    f"moasha (dominated at {t} {'samples' if self._time_attr == 'samples_seen' else 'epochs'})",
                )
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        """A trial's last result counts at the highest rung it reached (as in Ray's ASHA), deciding nothing."""
        if self._time_attr not in result or any(m not in result for m in self._metrics):
            return
        for milestone, recorded in self._rungs:
            if result[self._time_attr] >= milestone:
                recorded.setdefault(trial.trial_id, self._point(result))
                return
