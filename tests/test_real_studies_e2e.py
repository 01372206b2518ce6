"""Every real study search space (hub models and datasets, GPUs) runs end to end offline, on stand-ins.

Each YAML under ``search_spaces/<model>/`` is read as shipped; ``tests/standins.py`` swaps each hub id for a
stand-in in hub layout (the tiny Qwen2 saved with ``save_pretrained``; dataset folders with the real columns, a
few rows each) and shrinks it to a CPU (2 trials, small sizes, nf4 with float32 compute). ``gridrun validate``
must find nothing left to check on the hub, and ``gridrun launch`` must finish both trials with every metric the
study promises, its forgetting benchmarks included, recorded in MLflow.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from tests.standins import standin_spec

REAL = ROOT / "search_spaces"
#: study YAML → the task metrics its evaluators promise
STUDIES = {
    "qwen2.5-0.5b-instruct/forgetting.yaml": ["task/answer_loss", "task/answer_ppl"],
    "qwen2.5-0.5b-instruct/gsm8k.yaml": ["task/accuracy", "task/extracted"],
    "qwen2.5-0.5b-instruct/json_format.yaml": ["task/format_success", "task/duplicate_json_rate", "task/schema_match"],
    "qwen2.5-7b-instruct/squad.yaml": ["task/em", "task/f1", "task/lenient", "task/prompt_tokens", "task/latency_s"],
    "qwen2.5-coder-0.5b-instruct/code.yaml": ["task/pass_rate", "task/partial_credit", "task/timeouts"],
}
#: what every real study measures besides its task: the probe and the three standard benchmarks
BENCHMARKS = ("hellaswag", "arc_challenge", "winogrande")
FORGETTING = [
    "forget/probe_loss",
    "forget/probe_loss_base",
    "forget/delta",
    *(f"forget/mc_{b}" for b in BENCHMARKS),
    *(f"forget/mc_{b}_base" for b in BENCHMARKS),
    "forget/mc_accuracy",
    "forget/mc_accuracy_base",
    "forget/mc_delta",
    "objective",
    "train/loss",
]


def test_every_real_study_has_an_offline_run() -> None:
    assert {str(p.relative_to(REAL)) for p in REAL.glob("*/*.yaml") if p.parent.name != "tiny"} == set(STUDIES)


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_real_study_runs_end_to_end_on_standins(
    study: str,
    tmp_path: Path,
    tiny_model_path: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    on_cluster: str,
) -> None:
    import mlflow

    from gridrun.sources import input_sources, is_hub_id
    from gridrun.spec import validate_dict

    raw = standin_spec(REAL / study, tmp_path)
    assert [s.field for s in input_sources(validate_dict(raw)) if is_hub_id(s.source)] == []
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))  # the CLI's Arrow copies of the stand-ins

    r = run_cli("validate", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith(f"ok: {raw['name']} — ") and "not checked offline" not in r.stdout

    t0 = time.perf_counter()
    r = run_cli("launch", str(path), "--set", on_cluster, cwd=tmp_path, timeout=600)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    (summary_file,) = (tmp_path / "gridrun_results").glob("*/gridrun_summary.json")
    summary = json.loads(summary_file.read_text())
    assert [t["status"] for t in summary["trials"]] == ["TERMINATED", "TERMINATED"]
    assert summary["objective_metric"] == raw["objective"]["metric"]

    best = summary["best"]["metrics"]
    for key in [*STUDIES[study], *FORGETTING]:
        assert key in best, f"{study}: {key} missing from the best trial's metrics"
        assert math.isfinite(best[key]), f"{study}: {key} = {best[key]}"
    for suffix in ("", "_base"):
        accs = [best[f"forget/mc_{b}{suffix}"] for b in BENCHMARKS]
        assert all(0 <= a <= 1 for a in accs)
        assert best[f"forget/mc_accuracy{suffix}"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)
    assert best["forget/probe_loss_base"] == pytest.approx(summary["baselines"]["probe"]["loss"], abs=1e-12)

    mlflow.set_tracking_uri(summary["mlflow"]["uri"])
    runs = mlflow.search_runs(search_all_experiments=True)
    parents = runs[runs["tags.gridrun.kind"] == "experiment"]
    children = runs[runs["tags.gridrun.kind"] == "trial"]
    assert list(parents.run_id) == [summary["mlflow"]["parent_run_id"]]
    assert len(children) == 2 and set(children["tags.mlflow.parentRunId"]) == {summary["mlflow"]["parent_run_id"]}
    assert set(children.run_id) == {t["mlflow_run_id"] for t in summary["trials"]}
    assert set(runs["status"]) == {"FINISHED"}
    print(f"\n{study}: launch {took:.1f}s (experiment {summary['wall_s']:.1f}s)")
