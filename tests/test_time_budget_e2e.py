"""A real `gridrun launch` under a small `search.time_budget`: the search ends early, the trials running then
finish their round and are recorded with the stop reason, the summary is written, MLflow is closed; `gridrun
resume` has nothing left to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FORGETTING, TINY, run_cli

pytestmark = pytest.mark.slow

OVERRIDES = [
    *TINY,
    # more trials than 20 s can hold on an idle machine (each takes a few seconds), and several rounds each
    # (eval every 2 steps of 3 epochs), so the budget, not the trial count, ends the search, mid-round
    "search.num_trials=60",
    "train.epochs=3",
    "train.eval_every=2",
    "search.max_concurrent=2",
    "search.n_startup_trials=2",
    "scheduler.type=none",
    "forgetting.budget=null",
    "search.time_budget=20s",  # counted from the search's first step: the first trials start on a busy machine too
]


def test_time_budget_ends_the_search_and_records_the_running_trials(
    tmp_path: Path, tiny_model_path: Path, mlflow_store: str, on_cluster: str
) -> None:
    from mlflow.tracking import MlflowClient

    sets = [a for o in [*OVERRIDES, on_cluster] for a in ("--set", o)]  # joins the session's Ray cluster
    r = run_cli("launch", str(FORGETTING), *sets, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "time budget 20s spent: running trials finish their current round" in r.stderr
    exp_dir = next((tmp_path / "gridrun_results").iterdir())
    summary = json.loads((exp_dir / "gridrun_summary.json").read_text())
    tb = summary["time_budget"]
    assert tb["ended_search"] is True and tb["spent_s"] >= 20 and tb["budget_s"] == 20
    assert "interrupted" not in summary
    trials = summary["trials"]
    assert 1 <= len(trials) < 60, "the budget ended the search before every trial ran"
    assert not set(tb["not_run"]) & {t["trial_id"] for t in trials}
    stopped = [t for t in trials if t["stop_reason"] == "time budget (20s spent)"]
    assert stopped, [t["stop_reason"] for t in trials]
    assert all(t["status"] == "TERMINATED" for t in trials)
    meta = json.loads((exp_dir / "gridrun_experiment.json").read_text())
    assert meta["time_budget"]["spent_s"] == tb["spent_s"]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = {
        c.data.tags["gridrun.trial_id"]: c
        for c in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    for t in stopped:  # their last round is recorded, the run closed with the reason
        run = children[t["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["gridrun.stop_reason"] == "time budget (20s spent)"
        assert run.data.metrics["samples_seen"] == t["trained"] > 0  # the last round recorded (MLflow keeps the last)
    assert all(children[t].info.status != "RUNNING" for t in tb["not_run"] if t in children)

    again = run_cli("resume", str(exp_dir), cwd=tmp_path, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].endswith("are spent; nothing is left to resume")
