"""Pareto mode: Optuna gets (task up, forgetting down); every Pareto-optimal trial is registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FORGETTING, TINY, run_cli

pytestmark = pytest.mark.slow


def test_pareto_mode_registers_the_front(
    tmp_path: Path, tiny_model_path: Path, mlflow_store: str, on_cluster: str
) -> None:
    from mlflow.tracking import MlflowClient

    overrides = [
        *TINY,
        "objective.mode=pareto",
        "search.num_trials=4",
        "search.n_startup_trials=2",
        "search.space.train.lr.high=0.03",
        "tracking.experiment=pareto-tiny",
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    r = run_cli("launch", str(FORGETTING), *sets, "--set", on_cluster, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    exp_dir = next((tmp_path / "gridrun_results").iterdir())
    s = json.loads((exp_dir / "gridrun_summary.json").read_text())
    assert s["mode"] == "pareto" and len(s["trials"]) == 4
    front = s["pareto_front"]
    assert front
    # the front is exactly the non-dominated trials
    pts = {t["trial_id"]: (t["task"], t["forget_delta"]) for t in s["trials"]}
    for tid in front:
        t, f = pts[tid]
        assert not any((t2 >= t and f2 <= f) and (t2 > t or f2 < f) for t2, f2 in pts.values())
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    versions = client.search_model_versions("name='pareto-tiny'")
    assert sorted(v.tags["gridrun.trial_id"] for v in versions) == sorted(front)
    assert "pareto front (task vs forgetting)" in r.stdout
