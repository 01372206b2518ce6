"""Every tiny study search space launches end to end (2 trials) and its metrics land in MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

STUDIES = {
    "squad.yaml": ["task/em", "task/f1", "task/lenient", "task/prompt_tokens", "task/gen_tokens", "task/latency_s"],
    "json_format.yaml": ["task/format_success", "task/duplicate_json_rate", "task/schema_match"],
    "gsm8k.yaml": ["task/accuracy", "task/extracted", "task/weighted"],
    "code.yaml": ["task/pass_rate", "task/partial_credit", "task/pass_rate_fizzbuzz", "task/pass_rate_rpn"],
    "forgetting.yaml": ["task/answer_loss", "task/answer_ppl", "forget/mc_accuracy", "forget/mc_delta"],
}
#: Smaller runs where a study's shipped size is for learning, not for what this test checks (its metrics land):
#: json's two passes over 384 examples (where the tiny model learns the format) become one over 128, one eval round;
#: code, gsm8k and squad train on half their rows (one eval round: every eval set, so every metric, stays whole);
#: forgetting's 128 rows become 64 (one or two eval rounds, by the sampled ratio)
SMALLER = {
    "json_format.yaml": ["data.train_size=128", "train.epochs=1"],
    "code.yaml": ["data.train_size=40"],
    "gsm8k.yaml": ["data.train_size=48"],
    "squad.yaml": ["data.train_size=48"],
    "forgetting.yaml": ["data.train_size=64"],
}
TIMES: dict[str, float] = {}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_tiny_study_runs_end_to_end(
    study: str, tmp_path: Path, tiny_model_path: Path, mlflow_store: str, on_cluster: str
) -> None:
    from mlflow.tracking import MlflowClient

    path = ROOT / "search_spaces" / "tiny" / study
    if not path.is_file():
        pytest.fail(f"missing {path}")
    t0 = time.perf_counter()
    sets = [a for o in ["search.num_trials=2", *SMALLER.get(study, [])] for a in ("--set", o)]
    r = run_cli("launch", str(path), *sets, "--set", on_cluster, cwd=tmp_path, timeout=900)
    TIMES[study] = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(next((tmp_path / "gridrun_results").glob("*/gridrun_summary.json")).read_text())
    assert len(summary["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in summary["trials"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    for t in summary["trials"]:
        metrics = client.get_run(t["mlflow_run_id"]).data.metrics
        for key in [*STUDIES[study], "objective", "forget/delta", "train/loss"]:
            assert key in metrics, f"{study}: {key} missing from MLflow"
        if study == "code.yaml":
            assert any(k.startswith("task/pass_rate_d") for k in metrics)
        metric = summary["objective_metric"]  # did tuning help: the base model's score and the gain on it
        assert f"{metric}_base" in metrics and f"{metric}_gain" in metrics, f"{study}: no base/gain in MLflow"
    if summary["base_scores"]:  # scored before the trials (json's searched hard-negative rate: by each trial)
        parent = client.get_run(summary["mlflow"]["parent_run_id"]).data.metrics
        assert any(k.startswith(f"{summary['objective_metric']}_base") for k in parent), f"{study}: no parent base"
    assert any(line.startswith("base ") for line in r.stdout.splitlines()), f"{study}: no base row printed"
    assert "did tuning help?" in r.stdout
    print(f"\n{study}: {TIMES[study]:.1f}s")
