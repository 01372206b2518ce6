"""A real `gridrun launch` with its storage in a bucket (an S3-compatible server on 127.0.0.1): checkpoints,
summary, plots and Tune's state land in the bucket and nowhere local; `report`, `export` and `compare` read the
experiment back from its URI; MLflow holds each trial's adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FORGETTING, TINY, copy_store, run_cli
from tests.s3server import BUCKET, keys, pointed_at, s3_server

pytestmark = pytest.mark.slow

STORAGE = f"s3://{BUCKET}/exp"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_path, mlflow_template) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("s3e2e")
    copy_store(mlflow_template, work)
    overrides = [*TINY, "search.num_trials=1", "scheduler.type=none", "forgetting.budget=null"]
    overrides += [f"tracking.storage={STORAGE}", f"tracking.uri=sqlite:///{work}/mlruns.db"]
    with s3_server() as env, pointed_at(env):  # the commands inherit this process's environment
        r = run_cli("launch", str(FORGETTING), *[a for o in overrides for a in ("--set", o)], cwd=work, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        names = {k.split("/")[1] for k in keys(env, prefix="exp/")}
        assert len(names) == 1, names
        exp = f"{STORAGE}/{names.pop()}"
        yield {"work": work, "env": env, "exp": exp, "stdout": r.stdout}


def test_everything_lands_in_the_bucket_and_nothing_locally(experiment: dict[str, Any]) -> None:
    env, exp = experiment["env"], experiment["exp"]
    prefix = exp.removeprefix(f"s3://{BUCKET}/") + "/"
    found = [k.removeprefix(prefix) for k in keys(env, prefix=prefix)]
    assert {"gridrun_experiment.json", "gridrun_summary.json"} <= set(found)
    assert {"report/pareto.png", "report/curves.png"} <= set(found)
    assert any(k.startswith("experiment_state-") for k in found)  # Tune's own state, for resume
    summary = json.loads(_read(env, prefix + "gridrun_summary.json"))
    assert summary["experiment_dir"] == exp and len(summary["trials"]) == 1
    for row in summary["trials"]:
        ckpt = row["best_checkpoint"]["path"]
        assert ckpt.startswith(exp + "/") and row["adapter"] == ckpt + "/adapter"
        rel = ckpt.removeprefix(exp + "/")
        assert f"{rel}/adapter/adapter_model.safetensors" in found and f"{rel}/gridrun_card.json" in found
    # what is local: MLflow's store (the spec's tracking.uri and its artifacts), nothing of the experiment
    work = experiment["work"]
    assert not (work / "s3:").exists() and not (work / "gridrun_results").exists()
    assert {p.name for p in work.iterdir()} <= {"mlruns.db", "mlruns", "mlartifacts"}, list(work.iterdir())
    assert f"experiment folder {exp}" in experiment["stdout"]


def _read(env: dict[str, str], key: str) -> str:
    from tests.s3server import client

    return client(env).get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_mlflow_holds_each_trials_adapter(experiment: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{experiment['work']}/mlruns.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(ids, "tags.`gridrun.kind` = 'trial'")
    assert len(children) == 1
    for run in children:
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter_model.safetensors", "adapter_config.json", "gridrun_card.json"} <= names, names


def test_report_export_and_compare_read_the_uri(experiment: dict[str, Any], tmp_path: Path) -> None:
    exp = experiment["exp"]
    r = run_cli("report", exp, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best trial" in r.stdout and f"experiment folder: {exp}" in r.stdout and f"plots: {exp}/report" in r.stdout
    r = run_cli("export", exp, "--out", str(tmp_path / "adapter"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert {"adapter_model.safetensors", "adapter_config.json", "gridrun_card.json"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    r = run_cli("compare", exp, "-n", "2", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("--- adapter (trial ") == 2
    r = run_cli("sync", exp, cwd=tmp_path)  # nothing was pending: nothing to write, the run closed already
    assert r.returncode == 0 and "wrote 0 pending MLflow writes" in r.stdout, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"adapter"}  # the readers leave no download behind
