"""A real `gridrun launch`: Ray Tune + Optuna + ASHA over the tiny model, recorded in MLflow; adapters reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FORGETTING, TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_path, ray_cluster) -> dict:
    """One launch every test here reads. It joins the session's Ray cluster (test_storage_e2e keeps a local start);
    its MLflow store is made from nothing."""
    work = tmp_path_factory.mktemp("e2e")
    overrides = [
        *TINY,
        "data.train_size=128",
        "train.epochs=2",
        "search.num_trials=4",
        "search.n_startup_trials=2",
        "scheduler.grace_period=16",
        "search.space.train.lr.high=0.03",
        "forgetting.budget=1.0",
        "forgetting.patience=1",
    ]
    overrides.append(f"resources.address={ray_cluster}")
    args = ["launch", str(FORGETTING)] + [a for o in overrides for a in ("--set", o)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")  # as on_cluster does for one test: the cluster's token mode
        r = run_cli(*args, cwd=work, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    exp_dirs = list((work / "gridrun_results").iterdir())
    assert len(exp_dirs) == 1
    summary = json.loads((exp_dirs[0] / "gridrun_summary.json").read_text())
    return {"work": work, "summary": summary, "stdout": r.stdout}


def test_launch_runs_every_trial_and_prints_the_summary(experiment) -> None:
    s = experiment["summary"]
    assert len(s["trials"]) == 4
    assert all(t["status"] == "TERMINATED" for t in s["trials"])
    assert s["best"] is not None and s["best"]["adapter"]
    out = experiment["stdout"]
    work = experiment["work"].resolve()  # the URI is shown absolute: it names one store wherever it is read
    assert (
        "best trial" in out and "best config" in out and f"gridrun ui --tracking-uri sqlite:///{work}/mlruns.db" in out
    )
    for t in s["trials"]:
        assert t["trial_id"] in out and t["stop_reason"]
        assert set(t["params"]) == {"train.lr", "lora.r", "data.sample_ratio"}


def test_trial_folders_hold_tunes_result_files_and_no_tensorboard_events(experiment) -> None:
    """Tune's per-trial results stay (progress.csv, result.json: its ResultGrid reads them); its TensorBoard event
    files, which nothing reads and whose import cost every launch seconds, are not written."""
    trials = [p for p in Path(experiment["summary"]["experiment_dir"]).iterdir() if p.name.startswith("qlora_sft_")]
    assert len(trials) == 4
    for folder in trials:
        names = {p.name for p in folder.iterdir()}
        assert {"progress.csv", "result.json"} <= names, names
        assert not any(n.startswith("events.out.tfevents") for n in names), names
        assert len((folder / "progress.csv").read_text().splitlines()) >= 2  # a header and a row per report


def test_mlflow_holds_parent_children_curves_and_adapters(experiment) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{experiment['work']}/mlruns.db"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    parents = runs[runs["tags.gridrun.kind"] == "experiment"]
    children = runs[runs["tags.gridrun.kind"] == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents.run_id.iloc[0]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(runs["status"]) == {"FINISHED"}
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent_id)]
    for run_id in children.run_id:
        run = client.get_run(run_id)
        assert float(run.data.params["train.lr"]) > 0 and "lora.r" in run.data.params
        assert run.data.tags["gridrun.stop_reason"]
        hist = client.get_metric_history(run_id, "forget/delta")
        steps = [m.step for m in hist]
        assert steps and steps == sorted(set(steps))  # one point per eval round, on the samples axis
        for key in ("task/format_success", "objective", "train/loss", "forget/probe_loss_base"):
            assert client.get_metric_history(run_id, key), key
        names = {a.path for a in client.list_artifacts(run_id, "adapter")}
        assert {
            "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json",
            "adapter/gridrun_card.json",
        } <= names


def test_logged_adapter_reproduces_its_trial_metric(experiment, tmp_path: Path) -> None:
    """Download a child's adapter from MLflow, load it with peft onto the base model, re-evaluate."""
    from mlflow.tracking import MlflowClient

    from gridrun.spec import load_spec
    from trainables.qlora_sft import evaluate_adapter

    s = experiment["summary"]
    client = MlflowClient(f"sqlite:///{experiment['work']}/mlruns.db")
    spec = load_spec(FORGETTING, [*TINY, "data.train_size=128", "train.epochs=2"])
    # the best trial, and the one that forgot most (its adapter is far from the base: a strong check)
    worst = max(s["trials"], key=lambda t: t["forget_delta"])
    for trial in {t["trial_id"]: t for t in (s["best"], worst)}.values():
        local = client.download_artifacts(trial["mlflow_run_id"], "adapter", str(tmp_path / trial["trial_id"]))
        card = json.loads((Path(local) / "gridrun_card.json").read_text())
        assert card["base_model"] == "builtin:tiny-general" and card["quantization"] == "nf4"
        metrics = evaluate_adapter(spec.with_params(trial["params"]), local)
        # the logged adapter is the trial's best checkpoint by objective: its card holds what was reported then
        reported = card["metrics"]
        run = client.get_run(trial["mlflow_run_id"])
        assert float(run.data.tags["gridrun.adapter_objective"]) == pytest.approx(reported["objective"], rel=1e-5)
        assert reported["objective"] == pytest.approx(trial["best_checkpoint"]["objective"])
        history = {m.step: m.value for m in client.get_metric_history(trial["mlflow_run_id"], "objective")}
        assert history[reported["samples_seen"]] == pytest.approx(reported["objective"])
        assert reported["forget/probe_loss"] != pytest.approx(reported["forget/probe_loss_base"], abs=1e-6)
        for key in (
            "task/format_success",
            "task/schema_match",
            "task/duplicate_json_rate",
            "forget/probe_loss",
        ):
            assert metrics[key] == pytest.approx(reported[key], abs=1e-9), key


def test_report_command_prints_the_same_table(experiment) -> None:
    exp_dir = experiment["summary"]["experiment_dir"]
    r = run_cli("report", exp_dir)
    assert r.returncode == 0
    assert experiment["summary"]["best"]["trial_id"] in r.stdout
    parent = experiment["summary"]["mlflow"]["parent_run_id"]
    r2 = run_cli("report", "--from-mlflow", parent, "--tracking-uri", f"sqlite:///{experiment['work']}/mlruns.db")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout
    r3 = run_cli("report", "--from-mlflow", "0" * 32, "--tracking-uri", f"sqlite:///{experiment['work']}/mlruns.db")
    assert r3.returncode == 2 and "no summary.json on that run" in r3.stderr


def test_best_adapter_is_registered_and_reproduces(experiment, tmp_path: Path) -> None:
    """The registered model version (penalized mode: the best trial) loads with peft and reproduces its metric."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from gridrun.spec import load_spec
    from trainables.qlora_sft import evaluate_adapter

    uri = f"sqlite:///{experiment['work']}/mlruns.db"
    client = MlflowClient(uri)
    s = experiment["summary"]
    assert s["registered"]["name"] == "forgetting-tiny" and s["registered"]["versions"] == ["1"]
    mv = client.get_model_version("forgetting-tiny", "1")
    assert mv.run_id == s["best"]["mlflow_run_id"] and mv.tags["gridrun.trial_id"] == s["best"]["trial_id"]
    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path))
    spec = load_spec(FORGETTING, [*TINY, "data.train_size=128", "train.epochs=2"])
    metrics = evaluate_adapter(spec.with_params(s["best"]["params"]), local)
    assert metrics["task/format_success"] == pytest.approx(float(mv.tags["task/format_success"]), abs=1e-6)
    assert metrics["forget/probe_loss"] == pytest.approx(float(mv.tags["forget/probe_loss"]), rel=1e-5)


def test_report_plots_exist_and_are_logged_to_the_parent(experiment) -> None:
    from mlflow.tracking import MlflowClient

    s = experiment["summary"]
    report = Path(s["report_dir"])
    names = {"pareto.png", "objective_vs_params.png", "curves.png"}
    assert names <= {p.name for p in report.iterdir()}
    for n in names:
        assert (report / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(f"sqlite:///{experiment['work']}/mlruns.db")
    logged = {a.path for a in client.list_artifacts(s["mlflow"]["parent_run_id"], "report")}
    assert {f"report/{n}" for n in names} <= logged
    assert all(len(t["curve"]) >= 1 for t in s["trials"])


def test_export_adapter_and_merged_model(experiment, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gridrun.builtin import resolve_model

    exp_dir = experiment["summary"]["experiment_dir"]
    r = run_cli("export", exp_dir, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    r = run_cli("export", exp_dir, "--out", str(tmp_path / "m"), "--merge", timeout=300)
    assert r.returncode == 0, r.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    base = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-general"))
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-4)
    r = run_cli("export", exp_dir, "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "not empty" in r.stderr
    r = run_cli("export", exp_dir, "--trial", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no such trial" in r.stderr


def test_compare_prints_base_and_adapter_side_by_side(experiment) -> None:
    s = experiment["summary"]
    worst = max(s["trials"], key=lambda t: t["forget_delta"])  # far from the base: its outputs change
    r = run_cli("compare", s["experiment_dir"], "--trial", worst["trial_id"], "-n", "3", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- base model") == 3 and r.stdout.count(f"--- adapter (trial {worst['trial_id']})") == 3
    assert "changed" in r.stdout
    bad = run_cli("compare", s["experiment_dir"], "-n", "0")
    assert bad.returncode == 2 and "-n: must be at least 1" in bad.stderr
