"""The MLflow callback, against a real MLflow client on a temporary SQLite store: it survives a tracking server
that is briefly away (the client fails its first calls) without ever making Tune wait, keeps what MLflow could not
take (in Tune's snapshot, in the spill file) and writes it exactly once later, writes the merged trial spec as
params, and closes unfinished runs."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gridrun.checkpoints import CheckpointKeeper
from gridrun.errors import GridrunError
from gridrun.progress import ProgressPrinter
from gridrun.run_writer import mlflow_client, transient
from gridrun.spec import spec_from_dict
from gridrun.tracking import MLflowTracker, flatten
from gridrun.validate import check_tracking_uri
from gridrun.writer import SPILL_FILE, replay_spill
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


class Blocked:
    """A real ``MlflowClient`` whose every call waits until ``open`` is set, as a hung server would."""

    def __init__(self, client: Any) -> None:
        self._client, self.open = client, threading.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            assert self.open.wait(30)
            return attr(*args, **kwargs)

        return call


def test_a_failed_metric_write_is_retried_not_lost(store, parent) -> None:
    _, real = store
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky), _trial()
    t.on_trial_start(0, [trial], trial)
    assert t.flush(5)
    flaky.left = 1  # the server goes away for one write
    t.on_trial_result(0, [trial], trial, {"objective": 0.5, "samples_seen": 8, "task/x": 1.0})
    t.on_trial_result(0, [trial], trial, {"objective": 0.6, "samples_seen": 16})
    assert t.flush(5) and flaky.left == 0  # the failed write was retried, in order, before the next
    run = t.runs["t1"]
    assert _history(real, run, "objective") == [(8, 0.5), (16, 0.6)]
    assert _history(real, run, "task/x") == [(8, 1.0)]


def test_params_survive_a_failed_run_creation(store, parent) -> None:
    """The server is away while the run is created: its params are written on the retry, once, in full."""
    _, real = store
    flaky = Failing(real, "log_batch", 1)
    t, trial = _tracker(store, parent, flaky), _trial()
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, {"objective": 0.5, "samples_seen": 8})
    assert t.flush(5) and flaky.left == 0
    params = real.get_run(t.runs["t1"]).data.params
    assert params["train.lr"] == "0.01" and params["lora.r"] == "4"  # the trial's sampled value, the fixed one
    assert len(real.search_runs([parent[0]], f"tags.mlflow.parentRunId = '{parent[1]}'")) == 1


def test_params_are_the_merged_trial_spec(store, parent) -> None:
    _, real = store
    t = _tracker(store, parent)
    t.on_trial_start(0, [_trial()], _trial())
    assert t.flush(5)
    params = real.get_run(t.runs["t1"]).data.params
    expected = {k: str(v) for k, v in flatten(t.spec.with_params({"train.lr": 0.01}).trial_dict()).items()}
    assert params == expected and "search.num_trials" not in params


def test_unfinished_runs_are_closed_as_killed(store, parent) -> None:
    _, real = store
    t = _tracker(store, parent)
    # Tune marks the trials it stops on its way out (Ctrl-C) TERMINATED too, but never completes them
    done, running = _trial("a", "TERMINATED"), _trial("b", "TERMINATED")
    for tr in (done, running):
        t.on_trial_start(0, [done, running], tr)
    t.on_trial_complete(0, [done, running], done)
    t.on_experiment_end([done, running])
    status = {tid: real.get_run(run).info.status for tid, run in t.runs.items()}
    assert status == {"a": "FINISHED", "b": "KILLED"} and t.unfinished == ["b"]
    assert real.get_run(t.runs["a"]).data.tags["gridrun.stop_reason"] == "completed"


def test_callback_state_round_trips(store, parent) -> None:
    t = _tracker(store, parent)
    t.on_trial_start(0, [_trial()], _trial())
    t.on_trial_result(0, [_trial()], _trial(), {"objective": 0.5, "samples_seen": 8})
    assert t.flush(5)
    fresh = _tracker(store, parent)
    fresh.set_state(t.get_state())
    assert fresh.runs == t.runs and fresh._queued_step == t._queued_step and fresh._resumed
    assert pickle.loads(pickle.dumps(t)).runs == {}  # the Tuner pickles callbacks: no thread, no client; state
    # comes back through set_state


def test_callbacks_never_wait_for_mlflow(store, parent) -> None:
    """A hung server costs Tune nothing: every callback only queues; the writes follow, in order, once it answers."""
    _, real = store
    hung = Blocked(real)
    t, trial = _tracker(store, parent, hung), _trial()
    slowest = 0.0
    events = [lambda: t.on_trial_start(0, [trial], trial)]
    events += [
        (lambda i=i: t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i}))
        for i in range(1, 21)
    ]
    events.append(lambda: t.on_trial_complete(0, [trial], trial))
    for event in events:
        t0 = time.perf_counter()
        event()
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.05, slowest
    assert t.pending() == 22
    hung.open.set()
    assert t.flush(10)
    run = real.get_run(t.runs["t1"])
    assert [s for s, _ in _history(real, run.info.run_id, "objective")] == [8 * i for i in range(1, 21)]
    assert run.info.status == "FINISHED"


def test_an_outage_at_the_end_is_spilled_then_replayed_exactly(store, parent, tmp_path: Path) -> None:
    """MLflow goes away mid-run and is still away at the end: the writes are kept in the spill file, and
    `gridrun sync` / `gridrun resume` (replay_spill) writes each exactly once when it is back."""
    _, real = store
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky, spill_path=tmp_path / SPILL_FILE, drain_s=0.5), _trial()
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, {"objective": 0.1, "samples_seen": 8})
    assert t.flush(5)
    flaky.left = 10**6  # gone for good
    for i in (2, 3):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    trial.status = "TERMINATED"
    t.on_trial_complete(0, [trial], trial)
    t.on_experiment_end([trial])
    assert (tmp_path / SPILL_FILE).is_file() and t.pending() == 3
    run_id = t.runs["t1"]
    assert real.get_run(run_id).info.status == "RUNNING"
    assert replay_spill(tmp_path / SPILL_FILE) == 3
    assert not (tmp_path / SPILL_FILE).exists()
    assert _history(real, run_id, "objective") == [(8, 0.1), (16, 0.2), (24, 0.3)]
    assert real.get_run(run_id).info.status == "FINISHED"


def test_a_server_back_during_the_exit_wait_gets_everything_nothing_spilled(store, parent, tmp_path: Path) -> None:
    """MLflow is away as the experiment ends and answers again partway through the exit patience: the writer
    keeps trying it every ``probe_s`` during the wait (not after the outage's growing backoff, which would have
    slept 0.5 + 1 + 2 + 4 s past this 4 s patience) and writes everything; nothing is spilled."""
    _, real = store
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky, spill_path=tmp_path / SPILL_FILE, drain_s=4.0), _trial()
    t.queue.probe_s = 0.2
    t.on_trial_start(0, [trial], trial)
    assert t.flush(5)
    flaky.left = 8  # away for the next 8 attempts: about 8 * 0.2 s of the wait, then back
    for i in (1, 2, 3):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    trial.status = "TERMINATED"
    t.on_trial_complete(0, [trial], trial)
    t.on_experiment_end([trial])
    assert flaky.left == 0 and t.pending() == 0
    assert not (tmp_path / SPILL_FILE).exists()
    run_id = t.runs["t1"]
    assert _history(real, run_id, "objective") == [(8, 0.1), (16, 0.2), (24, 0.3)]
    assert real.get_run(run_id).info.status == "FINISHED"


def test_a_replay_while_mlflow_is_still_away_keeps_the_rest(store, parent, tmp_path: Path, monkeypatch) -> None:
    _, real = store
    t, trial = _tracker(store, parent, Failing(real, "create_run", 10**6), spill_path=tmp_path / SPILL_FILE), _trial()
    t.drain_s = 0.3
    t.on_trial_start(0, [trial], trial)
    t.on_experiment_end([trial])
    spill = tmp_path / SPILL_FILE
    header = pickle.loads(spill.read_bytes())["header"]
    spill.write_bytes(pickle.dumps({"header": {**header, "uri": "http://127.0.0.1:9"}, "ops": t.queue.pending()}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # port 9 refuses at once: no need to retry
    with pytest.raises(GridrunError, match="2 writes are still kept"):
        replay_spill(spill)
    assert [op["op"] for op in pickle.loads(spill.read_bytes())["ops"]] == ["start", "kill"]


def test_a_snapshot_with_writes_pending_resumes_exactly(store, parent) -> None:
    """The driver dies during an outage: Tune's last snapshot holds the queued writes; the resumed tracker makes
    them, and the trial's re-reported results (from its checkpoint) are neither doubled nor lost."""
    _, real = store
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky), _trial()
    t.on_trial_start(0, [trial], trial)
    for i in (1, 2):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    assert t.flush(5)
    flaky.left = 10**6
    for i in (3, 4):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    snapshot = pickle.loads(pickle.dumps(t.get_state()))  # what Tune saved; then the driver died
    assert [op["step"] for op in snapshot["pending"]] == [24, 32]
    resumed = _tracker(store, parent)
    resumed.set_state(snapshot)
    resumed.on_trial_start(0, [trial], trial)  # the trial continues from its checkpoint at 16 samples
    for i in (3, 4, 5):
        resumed.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    assert resumed.flush(5)
    t.queue.close()
    assert _history(real, t.runs["t1"], "objective") == [(8 * i, i / 10) for i in range(1, 6)]
    assert len(real.search_runs([parent[0]], f"tags.mlflow.parentRunId = '{parent[1]}'")) == 1


def test_a_write_mlflow_refuses_is_dropped_not_retried_forever(store, parent) -> None:
    from mlflow.exceptions import MlflowException

    assert not transient(MlflowException.invalid_parameter_value("bad value"))
    assert transient(MlflowException("API request failed: connection refused"))  # INTERNAL_ERROR, as MLflow says
    assert transient(ConnectionError("down")) and not transient(FileNotFoundError("gone"))

    _, real = store

    class Refusing(Failing):
        def __getattr__(self, name: str) -> Any:
            if name == "set_terminated":
                raise MlflowException.invalid_parameter_value("no")
            return super().__getattr__(name)

    t, a, b = _tracker(store, parent, Refusing(real, "log_batch", 0)), _trial("a"), _trial("b")
    t.on_trial_start(0, [a, b], a)
    t.on_trial_complete(0, [a, b], a)  # refused
    t.on_trial_start(0, [a, b], b)
    t.on_trial_result(0, [a, b], b, {"objective": 0.5, "samples_seen": 8})
    assert t.flush(5) and t.queue.dropped == 1
    assert _history(real, t.runs["b"], "objective") == [(8, 0.5)]


def test_no_view_run_lines_over_http() -> None:
    """MLflow prints "🏃 View run ... at" for every run closed over HTTP unless told not to: gridrun's lines only."""
    mlflow_client("sqlite:///:memory:")
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True


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
    assert t.flush(5)
    run = real.get_run(t.runs["t1"])
    assert sorted(a.path for a in real.list_artifacts(run.info.run_id, "adapter")) == [
        "adapter/adapter_config.json",
        "adapter/gridrun_card.json",
    ]
    local = real.download_artifacts(run.info.run_id, "adapter/adapter_config.json", str(tmp_path / "dl"))
    assert Path(local).read_text() == "1"  # checkpoint 1: objective 0.9
    assert run.data.tags["gridrun.adapter_objective"] == "0.9" and run.info.status == "FINISHED"
    # the adapter is the run's MLflow 3 model output (the runs table's Models column), once even if replayed
    model_id = run.data.tags["gridrun.model_id"]
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    model = real.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and str(model.status) == "READY"
    assert model.tags["gridrun.adapter_uri"] == f"{run.info.artifact_uri}/adapter"
    assert t.writer._link_model(run.info.run_id, "t1") == model_id
    # registered, the version is linked to that model too
    import json

    from gridrun.tracking import register_adapters

    rows = [{"trial_id": "t1", "mlflow_run_id": run.info.run_id, "params": {}, "metrics": {"objective": 0.9}}]
    version = register_adapters(store[0], "adapters-linked", rows)[0]
    linked = json.loads(real.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert linked == [{"name": "adapters-linked", "version": version}]


def test_an_adapter_upload_a_server_refuses_is_recorded_and_the_run_still_closed(store, parent, tmp_path: Path) -> None:
    """A 413 from a proxy in front of the tracking server (nginx's default body limit) or a 403 from an S3
    artifact store will not change on retry: the run is closed with the refusal as a tag, and the writes behind
    it go on (retried forever, it would have held every later MLflow write)."""
    import requests
    from botocore.exceptions import ClientError
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
    from ray.tune import Checkpoint

    refusal = requests.Response()
    refusal.status_code = 413
    too_large = requests.HTTPError("413 Client Error: Request Entity Too Large", response=refusal)
    forbidden = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Put")
    assert isinstance(too_large, OSError) and not transient(too_large) and not transient(forbidden)
    refusal.status_code = 503
    assert transient(requests.HTTPError("503", response=refusal))  # a server away: retried as before
    refusal.status_code = 413

    _, real = store
    (tmp_path / "ckpt" / "adapter").mkdir(parents=True)
    (tmp_path / "ckpt" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "ckpt" / "gridrun_card.json").write_text("{}")
    keeper = CheckpointKeeper(1)

    class Refusing(Failing):
        def __getattr__(self, name: str) -> Any:
            if name == "log_artifacts":

                def refuse(*args: Any, **kwargs: Any) -> None:
                    raise too_large

                return refuse
            return super().__getattr__(name)

    t = _tracker(store, parent, Refusing(real, "log_batch", 0), keeper=keeper, log_adapters=True)
    a, b = SimpleNamespace(trial_id="a", config={}, last_result={}, status="RUNNING"), _trial("b")
    a.last_result = {"objective": 0.5, "samples_seen": 8}
    keeper.on_checkpoint(0, [a], a, Checkpoint("ckpt", filesystem=SubTreeFileSystem(str(tmp_path), LocalFileSystem())))
    t.on_trial_start(0, [a, b], a)
    a.status, a.last_result = "TERMINATED", {"progress": 1}
    t.on_trial_complete(0, [a, b], a)
    t.on_trial_start(0, [a, b], b)
    t.on_trial_result(0, [a, b], b, {"objective": 0.7, "samples_seen": 8})
    assert t.flush(5) and t.queue.dropped == 0
    run = real.get_run(t.runs["a"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["gridrun.artifact_error"].startswith("adapter not logged: HTTPError: 413 Client Error")
    assert _history(real, t.runs["b"], "objective") == [(8, 0.7)]  # the writes behind it were not held


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
    first = ProgressPrinter("task/x", "forget/delta", {}, total=3)
    first.on_trial_complete(0, [], _trial("a"))
    first.on_step_end(0, [])  # end lines come at the step's end
    resumed = ProgressPrinter("task/x", "forget/delta", {}, total=3)
    resumed.set_state(first.get_state())  # what Tune hands back from the experiment snapshot
    resumed.on_trial_complete(0, [], _trial("b"))
    resumed.on_step_end(0, [])
    lines = capsys.readouterr().out.splitlines()
    assert "done (1/3)" in lines[0] and "done (2/3)" in lines[1]


def test_sync_writes_what_mlflow_missed_then_closes_the_experiment(store, parent, tmp_path: Path) -> None:
    """`gridrun sync DIR`: the spill file's writes, each once, then the parent run of the finished experiment."""
    import json

    from gridrun.experiment import ExperimentMeta, MlflowIds
    from gridrun.finish import SUMMARY_FILE, sync

    uri, real = store
    exp_dir = tmp_path / "exp"
    (exp_dir / "report").mkdir(parents=True)
    spec = spec_from_dict({"name": "t", "tracking": {"uri": uri, "log_adapters": False}})
    dumped = spec.model_dump(mode="json")
    ExperimentMeta(dumped, dumped, "exp", MlflowIds(uri, parent[0], parent[1])).write(exp_dir)
    flaky = Failing(real, "log_batch", 0)
    t, trial = _tracker(store, parent, flaky, spill_path=exp_dir / SPILL_FILE, drain_s=0.3), _trial()
    t.on_trial_start(0, [trial], trial)
    assert t.flush(5)
    flaky.left = 10**6  # the server goes away for the rest of the experiment
    for i in (1, 2):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    t.on_trial_complete(0, [trial], trial)
    t.on_experiment_end([trial])
    summary = {
        "trials": [{"trial_id": "t1"}],
        "best": None,
        "mlflow": {"uri": uri, "experiment_id": parent[0], "parent_run_id": parent[1], "pending": "3 writes"},
    }
    (exp_dir / SUMMARY_FILE).write_text(json.dumps(summary))

    assert sync(exp_dir) == {"written": 3, "closed": True}
    assert _history(real, t.runs["t1"], "objective") == [(8, 0.1), (16, 0.2)]
    assert real.get_run(t.runs["t1"]).info.status == "FINISHED"
    assert real.get_run(parent[1]).info.status == "FINISHED"
    assert sync(exp_dir) == {"written": 0, "closed": False}  # nothing twice
    with pytest.raises(GridrunError, match="not a gridrun experiment folder"):
        sync(tmp_path)


def test_progress_says_when_a_trial_is_retried(capsys) -> None:
    printer, trial = ProgressPrinter("task/x", "forget/delta", {}), _trial("a")
    trial.num_failures, trial.max_failures = 1, 3
    printer.on_trial_recover(0, [trial], trial)
    printer.on_trial_start(0, [trial], trial)  # Tune starts it again, from its last checkpoint
    lines = capsys.readouterr().out.splitlines()
    assert "trial a lost its worker or failed; retry 1/3 from its last checkpoint" in lines[0]
    assert "trial a restarted from its last checkpoint" in lines[1]


def test_a_done_line_shows_the_last_and_the_best_round(capsys) -> None:
    """The summary table shows a trial's best checkpoint; its done line must not pass off the last round as it."""
    printer, trial = ProgressPrinter("task/x", "forget/delta", {}, total=2), _trial("a")
    printer.on_trial_start(0, [trial], trial)
    rounds = [(0.5, 0.8555, 192), (0.375, 0.2309, 256)]
    for task, obj, seen in rounds:
        trial.last_result = {"task/x": task, "forget/delta": 0.1, "objective": obj, "samples_seen": seen}
        printer.on_trial_result(0, [trial], trial, trial.last_result)
    printer.on_trial_complete(0, [trial], trial)
    printer.on_step_end(0, [trial])
    line = capsys.readouterr().out.splitlines()[-1]
    assert "done (1/2): last task/x 0.375, forget/delta 0.1, objective 0.2309 at 256 samples" in line
    assert "; best task/x 0.5, forget/delta 0.1, objective 0.8555 at 192 samples" in line


def test_running_trials_get_a_line_every_30_s_with_time_left(capsys, monkeypatch) -> None:
    clock = [1000.0]
    printer = ProgressPrinter("task/x", "forget/delta", {}, total=4)
    monkeypatch.setattr(printer, "_now", lambda: clock[0])
    a, b = _trial("a"), _trial("b")
    for t in (a, b):
        printer.on_trial_start(0, [a, b], t)
    a.last_result = {"progress": 0.25, "samples_seen": 64}
    b.last_result = {}
    clock[0] += 29
    printer.on_step_end(0, [a, b])
    assert "running" not in capsys.readouterr().out  # not yet 30 s
    clock[0] += 1
    printer.on_step_end(0, [a, b])
    lines = capsys.readouterr().out.splitlines()
    # a: 30 s for a quarter, so 120 s in all and 90 s left; b has not reported
    assert lines[0] == "[gridrun] trial a running 30 s: 64 samples (25%), about 90 s left"
    assert lines[1] == "[gridrun] trial b running 30 s: no evaluation round yet"
    # 2 running (90 s left at most), 2 waiting: one more round of 120 s
    assert lines[2] == "[gridrun] 0/4 trials done; at most about 4 min left"
    printer.on_step_end(0, [a, b])
    assert capsys.readouterr().out == ""  # the next lines come 30 s later


def test_a_resumed_trial_is_continued_not_started(capsys) -> None:
    first, trial = ProgressPrinter("task/x", "forget/delta", {}), _trial("a")
    first.on_trial_start(0, [trial], trial)
    resumed = ProgressPrinter("task/x", "forget/delta", {})
    resumed.set_state(first.get_state())
    resumed.on_trial_start(0, [trial], trial)
    lines = capsys.readouterr().out.splitlines()
    assert "trial a started: train.lr=0.01" in lines[0] and "trial a continued from its last checkpoint" in lines[1]


def test_child_runs_are_named_by_their_searched_values(store, parent) -> None:
    from gridrun.tracking import run_name

    config = {"train.lr": 0.0012, "lora.r": 8, "data.sample_ratio": 0.5812, "train.warmup_ratio": 0.1}
    searched = ["train.lr", "lora.r", "data.sample_ratio"]
    assert run_name(config, searched, "07ed57a7") == "lr=1.2e-3 r=8 ratio=0.58"
    both = [*searched, "train.warmup_ratio"]  # two `ratio`s: each keeps its last dotted part
    assert run_name(config, both, "x") == "lr=1.2e-3 r=8 sample_ratio=0.58 warmup_ratio=0.1"
    assert run_name({}, [], "07ed57a7") == "trial-07ed57a7"
    _, real = store
    t, trial = _tracker(store, parent), _trial()
    t.on_trial_start(0, [trial], trial)
    assert t.flush(5)
    assert real.get_run(t.runs["t1"]).info.run_name == "lr=0.01"


def test_the_parent_run_carries_the_fixed_settings_as_params(store) -> None:
    from gridrun.tracking import start_parent_run

    uri, real = store
    params = {f"train.p{i}": i for i in range(150)}  # more than one MLflow batch
    params["search.train.lr"] = {"type": "float", "low": 1e-5, "high": 0.02, "log": True}
    _, run_id = start_parent_run(uri, "parent-params", "exp-1", "name: x\n", {}, params=params)
    logged = real.get_run(run_id).data.params
    assert len(logged) == 151 and logged["train.p149"] == "149"
    assert logged["search.train.lr"] == "{'type': 'float', 'low': 1e-05, 'high': 0.02, 'log': True}"


def test_tunes_restore_hint_is_dropped_gridruns_resume_line_stands(caplog) -> None:
    """After a Ctrl-C, Tune's 'Resume experiment with: Tuner.restore(...)' would contradict `gridrun resume`."""
    import logging

    from gridrun.finish import quiet_tune_restore_hint

    quiet_tune_restore_hint()
    tune_log = logging.getLogger("ray.tune.tune")
    with caplog.at_level(logging.WARNING):
        tune_log.warning(
            "Experiment has been interrupted, but the most recent state was saved.\n"
            "Resume experiment with: Tuner.restore(path='/x', trainable=...)"
        )
        tune_log.warning("Trials did not complete: [a]")
    assert [r.getMessage() for r in caplog.records] == ["Trials did not complete: [a]"]


def test_a_resumed_experiments_wall_time_counts_every_session(tmp_path: Path) -> None:
    import json

    from gridrun.finish import SUMMARY_FILE, _wall_so_far

    assert _wall_so_far(tmp_path, 12.5) == {"wall_s": 12.5, "wall_s_session": 12.5}  # the first driver was killed
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"wall_s": 40.2, "interrupted": {}}))  # Ctrl-C'd after 40 s
    assert _wall_so_far(tmp_path, 12.5) == {"wall_s": 52.7, "wall_s_session": 12.5}
