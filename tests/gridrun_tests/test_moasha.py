"""MOASHA's promotion rule on hand-made rungs (exact), its sorting checked against Optuna's NSGA-II as reference,
and the scheduler's decisions and recorded reasons."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.study._multi_objective import _fast_non_domination_rank
from ray.tune.schedulers import TrialScheduler

from gridrun.moasha import MOASHA, crowding_distance, mo_order, nondominated_ranks, promote
from gridrun.spec import spec_from_dict
from gridrun.stopping import build_stopping

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_fronts_of_a_hand_made_rung() -> None:
    # (task ↑, forgetting ↓): a and b trade off; c is dominated by a only; d by everyone before it
    points = [(0.9, 0.5), (0.6, 0.1), (0.8, 0.6), (0.5, 0.7)]
    assert nondominated_ranks(points) == [0, 0, 1, 2]


def test_a_non_finite_point_comes_after_every_front() -> None:
    assert nondominated_ranks([(float("nan"), 0.1), (0.1, 0.9), (0.2, 0.1)]) == [3, 1, 0]


def test_order_is_front_then_crowding_then_arrival() -> None:
    # front 0: (1, 1), (0.5, 0.5), (0, 0) — the middle one has crowding 2 (1 per coordinate), the ends infinite
    points = [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.4, 0.6)]
    assert crowding_distance(points[:3]) == [2.0, float("inf"), float("inf")]
    assert mo_order(points) == [1, 2, 0, 3]


@pytest.mark.parametrize(
    ("recorded", "new", "rf", "expected"),
    [
        ([], (0.1, 0.9), 2, True),  # the first at a rung always continues
        ([(0.9, 0.1)], (0.5, 0.5), 2, False),  # dominated, keep 1 of 2
        ([(0.9, 0.5)], (0.5, 0.1), 2, True),  # a trade-off: both front 0, both boundary points; a tie continues
        ([(0.9, 0.1), (0.8, 0.2)], (0.7, 0.3), 2, False),  # third front, keep 2 of 3
        ([(0.9, 0.1), (0.5, 0.5)], (0.7, 0.3), 2, True),  # second front of 3, keep 2 of 3
        ([(0.9, 0.1), (0.5, 0.5)], (0.7, 0.3), 3, False),  # keep 1 of 3
        # one front of four: the newcomer sits between two close neighbours (crowding 0.2 + 0.2), the other
        # interior point is isolated (0.8 + 0.8): keep 2 of 4 = the two ends
        ([(1.0, 1.0), (0.0, 0.0), (0.9, 0.9)], (0.95, 0.95), 2, False),
    ],
)
def test_promotion_on_hand_made_rungs(recorded: list, new: tuple, rf: float, expected: bool) -> None:
    assert promote(recorded, new, rf) is expected


def test_sorting_agrees_with_optunas_nsga2() -> None:
    rng = random.Random(0)
    for _ in range(50):
        # coarse values, so that ties and duplicates happen
        points: list = [(rng.randint(0, 5) / 5, rng.randint(0, 5) / 5) for _ in range(rng.randint(1, 9))]
        loss = np.array([(-t, f) for t, f in points])  # Optuna minimizes both
        assert nondominated_ranks(points) == list(_fast_non_domination_rank(loss))
        # crowding: which of two tied boundary points is "the end" is arbitrary, so distinct coordinates here
        n = len(points)
        points = list(zip(rng.sample(range(20), n), rng.sample(range(20), n), strict=True))
        trials = [optuna.trial.create_trial(values=[-t, f], params={}, distributions={}) for t, f in points]
        for i, t in enumerate(trials):
            t.number = i
        ref = _calc_crowding_distance(list(trials))
        assert crowding_distance(points) == pytest.approx([ref[i] for i in range(len(points))])


def _result(sched: MOASHA, tid: str, samples: int, task: float, delta: float) -> str:
    res = {"samples_seen": samples, "task/format_success": task, "forget/delta": delta}
    return sched.on_trial_result(None, SimpleNamespace(trial_id=tid), res)


def test_the_scheduler_stops_dominated_trials_at_rungs_and_records_why() -> None:
    reasons: dict[str, str] = {}
    sched = MOASHA(reasons, "samples_seen", ("task/format_success", "forget/delta"), ("max", "min"), 32, 8, 2)
    assert [m for m, _ in sched._rungs] == [32, 16, 8]
    assert _result(sched, "a", 4, 0.0, 9.0) == CONTINUE  # before the first rung: nothing decided
    assert _result(sched, "a", 8, 0.5, 0.2) == CONTINUE
    assert _result(sched, "b", 8, 0.4, 0.3) == STOP  # dominated by a
    assert _result(sched, "c", 8, 0.9, 0.6) == CONTINUE  # trades off with a
    assert _result(sched, "d", 10, 0.45, 0.25) == STOP  # second front (behind a) among 4: keep 2
    assert _result(sched, "a", 16, 0.6, 0.2) == CONTINUE
    assert _result(sched, "a", 32, 0.7, 0.2) == STOP  # max_t: finished, no reason
    assert reasons == {"b": "moasha (dominated at 8 samples)", "d": "moasha (dominated at 10 samples)"}


def test_pareto_mode_gets_moasha_and_constrained_mode_asha_on_the_task() -> None:
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    pareto = spec_from_dict({"name": "t", "objective": {"mode": "pareto"}, "search": {"space": space}})
    assert isinstance(build_stopping(pareto, {})[0], MOASHA)
    constrained = spec_from_dict(
        {"name": "t", "objective": {"mode": "constrained"}, "forgetting": {"budget": 0.2}, "search": {"space": space}}
    )
    asha = build_stopping(constrained, {})[0]
    assert asha is not None and asha._metric == "task/format_success"
