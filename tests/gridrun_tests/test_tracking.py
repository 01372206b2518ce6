"""The MLflow callback survives a tracking server that is briefly away, and closes unfinished runs."""

from __future__ import annotations

from types import SimpleNamespace

from gridrun.checkpoints import CheckpointKeeper
from gridrun.tracking import MLflowTracker, ProgressPrinter, check_tracking_uri, flatten


class FlakyClient:
    """Records writes; the first `fail` log_batch calls raise as an unreachable server would."""

    def __init__(self, fail: int) -> None:
        self.fail, self.batches, self.terminated, self.created = fail, [], {}, 0

    def create_run(self, experiment_id, run_name, tags):
        self.created += 1
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run{self.created}"))

    def log_batch(self, run_id, metrics=(), params=()):
        if metrics and self.fail:
            self.fail -= 1
            raise ConnectionError("server down")
        self.batches.append((run_id, [m.key for m in metrics], [p.key for p in params]))

    def set_tag(self, *a):
        pass

    def set_terminated(self, run_id, status):
        self.terminated[run_id] = status


def _tracker(client) -> MLflowTracker:
    spec = {"train": {"lr": 0.1}, "lora": {"r": 4}}
    t = MLflowTracker("sqlite:///x.db", "1", "parent", spec, ["train.lr"], {}, CheckpointKeeper(2), log_adapters=False)
    t._client = client
    return t


def _trial(tid="t1", status="RUNNING"):
    return SimpleNamespace(
        trial_id=tid, config={"train.lr": 0.01}, checkpoint=None, last_result={"progress": 1}, status=status
    )


def test_a_failed_write_is_retried_not_lost() -> None:
    client = FlakyClient(fail=1)
    t = _tracker(client)
    trial = _trial()
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, {"objective": 0.5, "samples_seen": 8, "task/x": 1.0})
    assert len(t._pending) == 1  # the server was away: kept, not raised
    t.on_trial_result(0, [trial], trial, {"objective": 0.6, "samples_seen": 16})
    metric_batches = [b for b in client.batches if b[1]]
    assert len(metric_batches) == 2 and not t._pending  # the first write went through on the next event
    assert "task/x" in metric_batches[0][1]


def test_params_are_the_merged_trial_spec() -> None:
    client = FlakyClient(fail=0)
    t = _tracker(client)
    t.on_trial_start(0, [_trial()], _trial())
    params = client.batches[0][2]
    assert set(params) == {"train.lr", "lora.r"}


def test_unfinished_runs_are_closed_as_killed() -> None:
    client = FlakyClient(fail=0)
    t = _tracker(client)
    done, running = _trial("a", "TERMINATED"), _trial("b", "RUNNING")
    for tr in (done, running):
        t.on_trial_start(0, [done, running], tr)
    t.on_trial_complete(0, [done, running], done)
    t.on_experiment_end([done, running])
    assert client.terminated == {"run1": "FINISHED", "run2": "KILLED"}


def test_callback_state_round_trips() -> None:
    t = _tracker(FlakyClient(fail=0))
    t.on_trial_start(0, [_trial()], _trial())
    fresh = _tracker(FlakyClient(fail=0))
    fresh.set_state(t.get_state())
    assert fresh.runs == t.runs


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [1], "f": {}}) == {"a.b": 1, "a.c.d": 2, "e": [1], "f": {}}


def test_check_tracking_uri_accepts_local_stores(tmp_path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    check_tracking_uri(str(tmp_path / "mlruns"))
    check_tracking_uri("databricks")


def test_progress_counts_on_after_a_resume(capsys) -> None:
    first = ProgressPrinter("task/x", {}, total=3)
    first.on_trial_complete(0, [], _trial("a"))
    resumed = ProgressPrinter("task/x", {}, total=3)
    resumed.set_state(first.get_state())  # what Tune hands back from the experiment snapshot
    resumed.on_trial_complete(0, [], _trial("b"))
    lines = capsys.readouterr().out.splitlines()
    assert "done (1/3)" in lines[0] and "done (2/3)" in lines[1]
