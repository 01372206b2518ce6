"""The MLflow callback, against a real MLflow client on a temporary SQLite store: it survives a tracking server
that is briefly away (the client fails its first calls), writes the merged trial spec as params, and closes
unfinished runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gridrun.checkpoints import CheckpointKeeper
from gridrun.progress import ProgressPrinter
from gridrun.spec import spec_from_dict
from gridrun.tracking import MLflowTracker, flatten
from gridrun.validate import check_tracking_uri
from tests.conftest import ROOT


class Failing:
    """A real ``MlflowClient`` whose first ``n`` calls of ``method`` raise, as an unreachable server would."""

    def __init__(self, client: Any, method: str, n: int) -> None:
        self._client, self._method, self.left = client, method, n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.left > 0:
                self.left -= 1
                raise ConnectionError("server down")
            return attr(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlruns.db"
    return uri, MlflowClient(uri)


@pytest.fixture
def parent(store: tuple[str, Any], request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh experiment (one per test) and its parent run: (experiment_id, parent_run_id)."""
    _, client = store
    exp = client.create_experiment(request.node.name)
    return exp, client.create_run(exp).info.run_id


def _tracker(store: tuple[str, Any], parent: tuple[str, str], client: Any = None, **kw: Any) -> MLflowTracker:
    uri, real = store
    spec = spec_from_dict({"name": "t", "train": {"lr": 0.1}, "lora": {"r": 4}})
    kw.setdefault("keeper", CheckpointKeeper(2))
    kw.setdefault("log_adapters", False)
    t = MLflowTracker(uri, parent[0], parent[1], spec, ["train.lr"], {}, **kw)
    t._client = client or real
    return t


def _trial(tid: str = "t1", status: str = "RUNNING") -> Any:
    return SimpleNamespace(
        trial_id=tid, config={"train.lr": 0.01}, checkpoint=None, last_result={"progress": 1}, status=status
    )


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_failed_metric_write_is_retried_not_lost(store, parent) -> None:
    _, real = store
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky), _trial()
    t.on_trial_start(0, [trial], trial)
    flaky.left = 1  # the server goes away for one write
    t.on_trial_result(0, [trial], trial, {"objective": 0.5, "samples_seen": 8, "task/x": 1.0})
    assert len(t._pending) == 1  # kept, not raised
    t.on_trial_result(0, [trial], trial, {"objective": 0.6, "samples_seen": 16})
    assert not t._pending  # the first write went through on the next event, before the second
    run = t.runs["t1"]
    assert _history(real, run, "objective") == [(8, 0.5), (16, 0.6)]
    assert _history(real, run, "task/x") == [(8, 1.0)]


def test_params_survive_a_failed_run_creation(store, parent) -> None:
    """The server is away while the run is created: its params are written on the retry, once, in full."""
    _, real = store
    flaky = Failing(real, "log_batch", 1)
    t, trial = _tracker(store, parent, flaky), _trial()
    t.on_trial_start(0, [trial], trial)
    assert len(t._pending) == 1
    t.on_trial_result(0, [trial], trial, {"objective": 0.5, "samples_seen": 8})
    assert not t._pending
    params = real.get_run(t.runs["t1"]).data.params
    assert params["train.lr"] == "0.01" and params["lora.r"] == "4"  # the trial's sampled value, the fixed one
    assert len(real.search_runs([parent[0]], f"tags.mlflow.parentRunId = '{parent[1]}'")) == 1


def test_params_are_the_merged_trial_spec(store, parent) -> None:
    _, real = store
    t = _tracker(store, parent)
    t.on_trial_start(0, [_trial()], _trial())
    params = real.get_run(t.runs["t1"]).data.params
    expected = {k: str(v) for k, v in flatten(t.spec.with_params({"train.lr": 0.01}).trial_dict()).items()}
    assert params == expected and "search.num_trials" not in params


def test_unfinished_runs_are_closed_as_killed(store, parent) -> None:
    _, real = store
    t = _tracker(store, parent)
    done, running = _trial("a", "TERMINATED"), _trial("b", "RUNNING")
    for tr in (done, running):
        t.on_trial_start(0, [done, running], tr)
    t.on_trial_complete(0, [done, running], done)
    t.on_experiment_end([done, running])
    status = {tid: real.get_run(run).info.status for tid, run in t.runs.items()}
    assert status == {"a": "FINISHED", "b": "KILLED"}
    assert real.get_run(t.runs["a"]).data.tags["gridrun.stop_reason"] == "completed"


def test_callback_state_round_trips(store, parent) -> None:
    t = _tracker(store, parent)
    t.on_trial_start(0, [_trial()], _trial())
    t.on_trial_result(0, [_trial()], _trial(), {"objective": 0.5, "samples_seen": 8})
    fresh = _tracker(store, parent)
    fresh.set_state(t.get_state())
    assert fresh.runs == t.runs and fresh._last_step == t._last_step and fresh._resumed


def test_the_tracker_uploads_the_best_checkpoint_from_storage(store, parent, tmp_path: Path) -> None:
    """The adapter of the keeper's best checkpoint is logged, read through Tune's storage filesystem."""
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
    from ray.tune import Checkpoint

    _, real = store
    fs = SubTreeFileSystem(str(tmp_path), LocalFileSystem())
    keeper = CheckpointKeeper(1)
    trial = SimpleNamespace(trial_id="t1", config={}, last_result={}, status="RUNNING")
    for i, obj in enumerate([0.2, 0.9, 0.1]):
        (tmp_path / f"ckpt{i}" / "adapter").mkdir(parents=True)
        (tmp_path / f"ckpt{i}" / "adapter" / "adapter_config.json").write_text(str(i))
        (tmp_path / f"ckpt{i}" / "gridrun_card.json").write_text("{}")
        trial.last_result = {"objective": obj, "samples_seen": 8 * (i + 1)}
        keeper.on_checkpoint(0, [trial], trial, Checkpoint(f"ckpt{i}", filesystem=fs))
    t = _tracker(store, parent, keeper=keeper, log_adapters=True)
    t.on_trial_start(0, [trial], trial)
    trial.status, trial.last_result = "TERMINATED", {"progress": 1}
    t.on_trial_complete(0, [trial], trial)
    run = real.get_run(t.runs["t1"])
    assert sorted(a.path for a in real.list_artifacts(run.info.run_id, "adapter")) == [
        "adapter/adapter_config.json",
        "adapter/gridrun_card.json",
    ]
    local = real.download_artifacts(run.info.run_id, "adapter/adapter_config.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == "1"  # checkpoint 1: objective 0.9
    assert run.data.tags["gridrun.adapter_objective"] == "0.9" and run.info.status == "FINISHED"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1], "f": {}}) == {"a.b": 1, "a.c.d": 2, "e": [1], "f": {}}


def test_check_tracking_uri_accepts_local_stores(tmp_path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    check_tracking_uri(str(tmp_path / "mlruns"))
    check_tracking_uri("databricks")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
def test_check_tracking_uri_asks_whether_this_user_can_write() -> None:
    """A root-owned 0755 folder: readable and 'writable by someone' (its owner), not by an ordinary user, who
    gets the one-line refusal instead of a failed experiment later."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)  # traversable by the other user
        folder = Path(d, "store")
        folder.mkdir(mode=0o755)
        check = f"from gridrun.validate import check_tracking_uri; check_tracking_uri('sqlite:///{folder}/m.db')"
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", check]
        r = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode != 0 and "is not writable by this user" in r.stderr, r.stderr
        check_tracking_uri(f"sqlite:///{folder}/m.db")  # its owner may


def test_progress_counts_on_after_a_resume(capsys) -> None:
    first = ProgressPrinter("task/x", {}, total=3)
    first.on_trial_complete(0, [], _trial("a"))
    resumed = ProgressPrinter("task/x", {}, total=3)
    resumed.set_state(first.get_state())  # what Tune hands back from the experiment snapshot
    resumed.on_trial_complete(0, [], _trial("b"))
    lines = capsys.readouterr().out.splitlines()
    assert "done (1/3)" in lines[0] and "done (2/3)" in lines[1]
