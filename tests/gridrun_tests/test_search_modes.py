"""Constrained mode (the constraint told to Optuna, infeasible trials in the summary) and warm start (values
outside the new space dropped and counted, values recomputed for the new objective)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from gridrun.errors import GridrunError, SpecError
from gridrun.report import format_summary, summarize
from gridrun.searcher import build_searcher
from gridrun.spec import spec_from_dict, to_optuna
from gridrun.warm_start import earlier_trials, load_earlier, warm_trials

SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "lora.r": {"type": "categorical", "choices": [4, 8]},
}


def _spec(**objective: object) -> object:
    budget = {"budget": 0.2} if objective.get("mode") == "constrained" else {}
    return spec_from_dict({"name": "t", "objective": objective, "forgetting": budget, "search": {"space": SPACE}})


def test_constrained_mode_needs_a_budget() -> None:
    with pytest.raises(SpecError, match=r"constrained needs forgetting\.budget"):
        spec_from_dict({"name": "t", "objective": {"mode": "constrained"}})


def test_pareto_mode_runs_one_moasha_bracket() -> None:
    with pytest.raises(SpecError, match=r"MOASHA .* runs one bracket"):
        spec_from_dict({"name": "t", "objective": {"mode": "pareto"}, "scheduler": {"brackets": 2}})


def test_constrained_mode_tells_optuna_the_forgetting_over_budget() -> None:
    spec = _spec(mode="constrained")
    searcher = build_searcher(spec, to_optuna(spec.search.space)[0])
    for tid, task, delta in [("a", 0.9, 0.5), ("b", 0.6, 0.1)]:
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"task/format_success": task, "forget/delta": delta, "objective": 0.0})
    a, b = searcher._ot_study.trials
    assert (a.values, a.constraints, b.values, b.constraints) == (
        [0.9],
        {"forgetting": 0.3},
        [0.6],
        {"forgetting": -0.1},
    )


def _row(tid: str, task: float, delta: float) -> SimpleNamespace:
    m = {"trial_id": tid, "progress": 1, "task/format_success": task, "forget/delta": delta, "objective": task - delta}
    return SimpleNamespace(metrics=m, path=f"/x/{tid}", error=None, config={"train.lr": 1e-3}, checkpoint=None)


def test_infeasible_trials_are_reported_and_never_best() -> None:
    spec = _spec(mode="constrained")
    s = summarize(
        spec, [_row("a", 0.9, 0.5), _row("b", 0.6, 0.1), _row("c", 0.5, 0.2)], {}, {}, {"probe": {"loss": 1.0}}
    )
    assert s["infeasible"] == ["a"] and s["forgetting_budget"] == 0.2  # c sits on the budget: feasible
    assert {r["trial_id"]: r["feasible"] for r in s["trials"]} == {"a": False, "b": True, "c": True}
    assert s["best"]["trial_id"] == "b"  # a has the best task metric and the best objective, but forgets too much
    assert "infeasible (forget/delta > 0.2): a" in format_summary(s)
    none = summarize(spec, [_row("a", 0.9, 0.5)], {}, {}, {"probe": {"loss": 1.0}})
    assert none["best"] is None and "no trial kept forget/delta within the budget 0.2" in format_summary(none)


def _earlier(*rows: tuple) -> dict:
    return {"trials": [{"status": "TERMINATED", "params": p, "task": t, "forget_delta": d} for p, t, d in rows]}


EARLIER = _earlier(
    ({"train.lr": 1e-3, "lora.r": 8}, 0.8, 0.4),
    ({"train.lr": 5e-2, "lora.r": 8}, 0.9, 0.1),  # lr above the new range
    ({"train.lr": 1e-3, "lora.r": 16}, 0.9, 0.1),  # a rank the new space does not offer
    ({"train.lr": 2e-3, "lora.r": 4}, float("nan"), 0.1),  # never evaluated
)


def test_warm_start_drops_values_outside_the_new_space_and_says_how_many(caplog: pytest.LogCaptureFixture) -> None:
    spec = _spec(penalty=0.5)
    searched = to_optuna(spec.search.space)[0]
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        trials = warm_trials(spec, searched, EARLIER)
    assert [(t.params, t.values) for t in trials] == [({"train.lr": 1e-3, "lora.r": 8}, [0.8 - 0.5 * 0.4])]
    assert "1 earlier trials seed the sampler; 2 dropped (values outside this search space), 1 without" in caplog.text


def test_warm_values_follow_the_new_objective() -> None:
    row = _earlier(({"train.lr": 1e-3, "lora.r": 8}, 0.8, 0.4))
    pareto, constrained = _spec(mode="pareto"), _spec(mode="constrained")
    (p,) = warm_trials(pareto, to_optuna(pareto.search.space)[0], row)
    (c,) = warm_trials(constrained, to_optuna(constrained.search.space)[0], row)
    assert (p.values, c.values, c.constraints) == ([0.8, 0.4], [0.8], {"forgetting": pytest.approx(0.2)})


def test_warm_start_needs_the_same_searched_names() -> None:
    spec = _spec()
    earlier = _earlier(({"train.lr": 1e-3}, 0.8, 0.4))
    with pytest.raises(GridrunError, match=r"the earlier study did not search lora\.r"):
        warm_trials(spec, to_optuna(spec.search.space)[0], earlier)


def test_warm_start_from_an_experiment_folder_seeds_the_study(tmp_path: Path) -> None:
    (tmp_path / "gridrun_summary.json").write_text(json.dumps(EARLIER))
    spec = spec_from_dict({"name": "t", "search": {"space": SPACE, "warm_start": str(tmp_path)}})
    searched = to_optuna(spec.search.space)[0]
    searcher = build_searcher(spec, searched, earlier_trials(spec, searched))
    assert len(searcher._ot_study.trials) == 1
    searcher.suggest("x")  # the new trial comes after the seeded one
    assert len(searcher._ot_study.trials) == 2


def test_a_bad_warm_start_source_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(GridrunError, match="neither an experiment folder nor an MLflow run id"):
        load_earlier(str(tmp_path / "missing"), "sqlite:///x.db")
    with pytest.raises(GridrunError, match=r"search\.warm_start: no gridrun summary"):
        load_earlier(str(tmp_path), "sqlite:///x.db")
    from gridrun.validate import check_spec

    with pytest.raises(GridrunError, match="neither an experiment folder nor an MLflow run id"):
        check_spec(spec_from_dict({"name": "t", "search": {"space": SPACE, "warm_start": "no/such/folder"}}))
