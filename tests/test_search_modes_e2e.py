"""The new search modes through gridrun's launch (real Tuner, Optuna, MOASHA/ASHA, stoppers, MLflow) on replayed
curves: constrained mode reports infeasible trials in the summary and on their MLflow runs; a pareto study warm
started from a constrained one's folder says how many earlier trials fell outside its narrower space."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FORGETTING, TINY
from tests.replay_trainable import use_replay

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, *overrides: str) -> Any:
    from gridrun.spec import load_spec

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    base = [*TINY, f"tracking.uri={uri}", f"tracking.storage={tmp_path}/results", "search.max_concurrent=2"]
    return load_spec(FORGETTING, [*base, "search.num_trials=6", "search.n_startup_trials=3", *overrides])


def test_constrained_then_warm_started_pareto(
    tmp_path: Path,
    tiny_model_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlflow.tracking import MlflowClient

    from gridrun.launch import launch

    use_replay(monkeypatch, checkpoints=True)
    first = launch(_spec(tmp_path, "objective.mode=constrained", "forgetting.budget=0.5"), quiet=True)
    rows = first["trials"]
    assert len(rows) == 6 and first["mode"] == "constrained"
    over = sorted(r["trial_id"] for r in rows if not r["forget_delta"] <= 0.5)
    assert sorted(first["infeasible"]) == over
    feasible = [r for r in rows if r["feasible"]]
    assert first["best"]["trial_id"] in {r["trial_id"] for r in feasible}
    assert first["best"]["task"] == max(r["task"] for r in feasible)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    for r in rows:
        assert client.get_run(r["mlflow_run_id"]).data.tags["gridrun.feasible"] == str(r["feasible"]).lower()
    parent = client.get_run(first["mlflow"]["parent_run_id"])
    assert parent.data.metrics["infeasible_trials"] == len(over)

    exp_dir = next(p for p in (tmp_path / "results").iterdir() if (p / "gridrun_summary.json").is_file())
    lrs = sorted(r["params"]["train.lr"] for r in rows)
    narrower = (lrs[0] + lrs[1]) / 2  # the smallest earlier lr falls outside the new range
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        second = launch(
            _spec(
                tmp_path,
                "objective.mode=pareto",
                f"search.space.train.lr.low={narrower}",
                f"search.warm_start={exp_dir}",
                "tracking.experiment=warm",
            ),
            quiet=True,
        )
    assert "5 earlier trials seed the sampler; 1 dropped (values outside this search space)" in caplog.text
    assert len(second["trials"]) == 6 and second["mode"] == "pareto" and second["pareto_front"]
    assert not any(r["stop_reason"].startswith("asha") for r in second["trials"])  # MOASHA decides in pareto mode
