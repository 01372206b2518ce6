"""The node-loss drill on object storage: a two-node Ray cluster and an S3-compatible server, both on the loopback
of a network namespace of their own, the experiment in the bucket. The worker node is killed mid-trial (its trial
goes on on the head from its checkpoint read back from the bucket), then the driver is SIGKILLed and
`gridrun resume s3://...` finishes. Exact counts in MLflow; nothing of the experiment on local disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_drills import _can_unshare, _check_exact

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a network namespace of its own")
def test_a_lost_node_and_a_killed_driver_on_object_storage(
    tmp_path: Path, tiny_model_path: Path, mlflow_store: str
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.cluster_drill import TRIALS
    from tests.conftest import ROOT

    r = subprocess.run(
        ["unshare", "-n", "--", sys.executable, "-m", "tests.cluster_drill_s3", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "".join(p.read_text()[-2500:] for p in sorted(tmp_path.glob("*.log"))) or r.stderr[-4000:]
    assert r.returncode == 0 and r.stdout.strip(), logs
    drill = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in drill, drill
    assert set(drill["addresses"]) == {"127.0.0.1"}, drill
    assert drill["resume_rc"] == 0, logs
    assert drill["head_checkpoints_before_driver_kill"] >= 1, drill  # the lost trial went on on the head
    # the driver died with trials left: the resume finished them
    assert drill["done_before_driver_kill"] < TRIALS and drill["done_by_resume"] >= 1, drill
    # exactly: a trial's done line follows the save (here an upload to the bucket) that holds its end, so no trial
    # done before the kill is run, or printed, again
    assert drill["done_before_driver_kill"] + drill["done_by_resume"] == TRIALS, drill

    exp, uri = drill["experiment"], f"sqlite:///{tmp_path}/mlruns.db"
    # `gridrun report s3://...` prints the summary read from the bucket
    assert drill["report_rc"] == 0, drill["report"]
    assert "best trial" in drill["report"] and f"experiment folder: {exp}" in drill["report"], drill["report"]
    # nothing of the experiment was written locally: MLflow's store and the drill's own logs only
    assert set(drill["local_after"]) <= {"mlruns.db", "mlruns", "head.log", "worker.log", "launch.log", "resume.log"}

    local = tmp_path / "bucket" / exp.removeprefix("s3://gridrun/")  # the bucket's copy, taken at the end
    summary = json.loads((local / "gridrun_summary.json").read_text())
    assert summary["experiment_dir"] == exp and summary.get("resumed") and "interrupted" not in summary
    assert len(summary["trials"]) == TRIALS and {t["status"] for t in summary["trials"]} == {"TERMINATED"}
    lost = drill["killed_trial_dir"].split("_")[1]  # replay_<trial id>_...
    launch_log = (tmp_path / "launch.log").read_text()
    assert f"trial {lost} lost its worker" in launch_log, launch_log[-3000:]
    assert f"trial {lost} restarted from its last checkpoint" in launch_log, launch_log[-3000:]
    # (the summary's retry count comes from Tune's last snapshot before the driver died, taken every 10 s or so:
    # a driver killed seconds after the retry, as here, may resume from one that predates it)
    counts = _check_exact(uri, summary)  # one child run per trial, every metric step once, all FINISHED
    assert counts["children"] == TRIALS

    client = MlflowClient(uri)
    for row in summary["trials"]:
        assert row["best_checkpoint"]["path"].startswith(exp + "/"), row["best_checkpoint"]
        tags = client.get_run(row["mlflow_run_id"]).data.tags
        assert tags["gridrun.adapter_checkpoint"] == row["best_checkpoint"]["path"], (tags, row["best_checkpoint"])
        names = {Path(a.path).name for a in client.list_artifacts(row["mlflow_run_id"], "adapter")}
        assert names == {"adapter_config.json", "gridrun_card.json"}, (row["trial_id"], names)  # the replay's
    assert client.get_run(summary["mlflow"]["parent_run_id"]).info.status == "FINISHED"
    # from a checkpoint read back from the bucket on the head node, not from scratch: its first checkpoint there
    # had seen more than its first one on the lost node. (Not read from progress.csv: the driver is SIGKILLed
    # seconds later, and when Tune's last snapshot predates that checkpoint, resume reruns the trial and its
    # result files from the start, as Tune does.)
    assert drill["head_first_checkpoint_samples"] > min(drill["worker_checkpoint_samples"]), drill
    where = f"{drill['experiment'].removeprefix('s3://')}/{drill['killed_trial_dir']}/checkpoint_"
    assert f"Restored on 127.0.0.1 from checkpoint: Checkpoint(filesystem=s3, path={where}" in launch_log, where
    retries = {t["trial_id"]: t["retries"] for t in summary["trials"] if t["retries"]}
    print(json.dumps({**{k: v for k, v in drill.items() if k != "report"}, **counts, "retries_in_summary": retries}))
