"""Kill the driver (SIGKILL) mid-experiment, `gridrun resume`: one MLflow child per trial, no duplicate or
missing metric steps, nothing left RUNNING, the searcher does not propose finished configs again, and no trial
whose "done" line was printed before the kill is run again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FORGETTING, TINY, run_cli

pytestmark = pytest.mark.slow

OVERRIDES = [
    *TINY,
    "data.train_size=64",  # eval rounds 32 samples apart: 3 or 4 a trial for the seeded sampler's configs
    "train.epochs=2",
    "search.num_trials=6",
    "search.max_concurrent=2",
    "search.n_startup_trials=3",
    "scheduler.type=none",
    "forgetting.budget=null",
]


def test_sigkill_then_resume(tmp_path: Path, tiny_model_path: Path, mlflow_store: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    args = [sys.executable, "-m", "gridrun.cli", "launch", str(FORGETTING)]
    args += [a for o in OVERRIDES for a in ("--set", o)]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the driver prints one line per finished trial
        seen.append(line)
        if "done (2/" in line:
            break
    killed_s = time.time()
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait(timeout=60)
    seen.append(proc.stdout.read())  # whatever else it printed before it died
    assert any("done (2/" in s for s in seen), "".join(seen)[-3000:]
    # a trial's done line is printed once the experiment state that holds its end is on storage
    done_before = set(re.findall(r"trial (\S+) done \(", "".join(seen)))
    assert len(done_before) >= 2, "".join(seen)[-3000:]

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    mlflow.set_tracking_uri(uri)
    before = mlflow.search_runs(search_all_experiments=True)
    assert "RUNNING" in set(before["status"])  # the crash left runs open

    exp_dir = next((tmp_path / "gridrun_results").iterdir())
    r = run_cli("resume", str(exp_dir), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # no trial done before the kill is started again; every other one ends in the resumed run
    again = set(re.findall(r"trial (\S+) (?:started|continued|restarted)", r.stdout))
    assert not again & done_before, (again & done_before, r.stdout[-3000:])
    done_after = re.findall(r"trial (\S+) done \(", r.stdout)
    assert len(done_after) == 6 - len(done_before) and not set(done_after) & done_before, r.stdout[-3000:]
    # Tune's record: those trials have no result from after the kill (a result's timestamp is whole seconds)
    results: dict[str, list[int]] = {}
    for f in exp_dir.glob("*/result.json"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            results.setdefault(row["trial_id"], []).append(int(row["timestamp"]))
    assert done_before <= set(results), (done_before, set(results))
    assert all(max(results[t]) <= killed_s for t in done_before), {t: results[t] for t in done_before}

    runs = mlflow.search_runs(search_all_experiments=True)
    children = runs[runs["tags.gridrun.kind"] == "trial"]
    assert len(runs[runs["tags.gridrun.kind"] == "experiment"]) == 1
    assert len(children) == 6 and children["tags.gridrun.trial_id"].is_unique
    assert "RUNNING" not in set(runs["status"])
    assert set(children["status"]) == {"FINISHED"}

    client = MlflowClient(uri)
    step = 4 * 8  # eval_every * batch_size samples between eval rounds
    configs = set()
    for _, row in children.iterrows():
        hist = client.get_metric_history(row.run_id, "objective")
        if row["tags.gridrun.trial_id"] in done_before:  # MLflow's record: no point logged after the kill
            assert max(m.timestamp for m in hist) <= killed_s * 1000, row["tags.gridrun.trial_id"]
        steps = [m.step for m in hist]
        assert len(steps) == len(set(steps)), f"duplicate steps {steps}"
        steps.sort()
        total = int(client.get_run(row.run_id).data.metrics["samples_seen"])
        expected = sorted({*range(step, total, step), total})
        assert steps == expected, f"gaps: {steps} vs {expected}"
        configs.add((row["params.train.lr"], row["params.lora.r"], row["params.data.sample_ratio"]))
    assert len(configs) == 6  # finished configs were not proposed again
