"""``search.sampler: gp``: Optuna's GPSampler behind Ray's OptunaSearch, in every objective mode.

The searcher is driven as Tune drives it (suggest, then on_trial_complete), two trials at a time as the demo
runs them, so the GP always models with one trial still running. No Ray cluster.
"""

from __future__ import annotations

import math

import optuna
import pytest

from gridrun.searcher import build_searcher
from gridrun.spec import spec_from_dict, to_optuna

SPACE = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
#: GPSampler marks a suggestion it modelled (rather than drew at random) with this system attribute.
MODELLED = "gp:relative_params:0"


def _searcher(mode: str = "penalized", sampler: str = "gp", seed: int = 0, startup: int = 3) -> object:
    spec = spec_from_dict(
        {
            "name": "t",
            "objective": {"mode": mode},
            "forgetting": {"budget": 0.2},
            "search": {"space": SPACE, "sampler": sampler, "seed": seed, "n_startup_trials": startup},
        }
    )
    return build_searcher(spec, to_optuna(spec.search.space)[0])


def _result(lr: float) -> dict[str, float]:
    """A task that peaks at lr 1e-3 and forgetting that grows with lr (over the 0.2 budget above 3e-3)."""
    task = math.exp(-((math.log10(lr) + 3) ** 2))
    delta = 0.2 * lr / 3e-3
    return {"task/format_success": task, "forget/delta": delta, "objective": task - delta}


def _run(searcher: object, n: int) -> list[float]:
    """``n`` trials two at a time (each completes after the next is suggested); the suggested lrs in order."""
    lrs: list[float] = []
    running: list[str] = []
    for i in range(n):
        tid = f"t{i}"
        lrs.append(searcher.suggest(tid)["train.lr"])
        running.append(tid)
        if len(running) == 2:
            done = running.pop(0)
            searcher.on_trial_complete(done, _result(lrs[int(done[1:])]))
    for tid in running:
        searcher.on_trial_complete(tid, _result(lrs[int(tid[1:])]))
    return lrs


def test_gp_sampler_follows_the_spec() -> None:
    s = _searcher(seed=7, startup=4)
    assert type(s._sampler) is optuna.samplers.GPSampler
    assert s._ot_study.sampler is s._sampler
    assert s._sampler._n_startup_trials == 4


@pytest.mark.parametrize("mode", ["penalized", "pareto", "constrained"])
def test_gp_models_every_mode_with_a_trial_running(mode: str) -> None:
    s = _searcher(mode)
    _run(s, 6)
    trials = s._ot_study.trials
    # the startup trials are random; every later one is the GP's, suggested while another trial was running
    assert [MODELLED in t.system_attrs for t in trials] == [False] * 4 + [True] * 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    if mode == "constrained":
        assert all(set(t.constraints) == {"forgetting"} for t in trials)


def test_gp_finds_the_peak_within_ten_trials_where_random_mostly_does_not() -> None:
    def hits(sampler: str) -> int:
        """Seeds whose 10 trials (3 random first) come within 0.1 decade of lr 1e-3."""
        return sum(
            min(abs(math.log10(x) + 3) for x in _run(_searcher(sampler=sampler, seed=s), 10)) < 0.1 for s in range(4)
        )

    gp, random = hits("gp"), hits("random")
    assert (gp, random < gp) == (4, True)
