"""Experiment storage on an object store: gridrun.storage against an S3-compatible server on 127.0.0.1 (moto),
the checkpoint keeper deleting in the bucket, the summary naming checkpoints by URI, and the one-line refusals
of a scheme nothing opens and a bucket that cannot be listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gridrun import storage
from gridrun.errors import GridrunError
from tests.conftest import FORGETTING, run_cli
from tests.s3server import BUCKET, keys, pointed_at, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    with s3_server() as env, pointed_at(env):
        yield env


def test_local_paths_stay_plain_folders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.location("results") == str(tmp_path / "results")
    assert storage.location(f"file://{tmp_path}/r/") == str(tmp_path / "r")
    assert storage.location("~/x") == str(Path("~/x").expanduser())
    assert not storage.is_uri("results") and not storage.is_uri(f"file://{tmp_path}") and storage.is_uri("s3://b/p")
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")
    storage.write_text(storage.join(str(tmp_path), "f.json"), "{}")
    assert storage.read_text(str(tmp_path / "f.json")) == "{}" and storage.is_file(str(tmp_path / "f.json"))
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left beside it
    with storage.local_dir(str(tmp_path)) as d:
        assert d == tmp_path  # no copy of a local folder


def test_a_uri_is_read_and_written_in_the_bucket(s3: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    where = storage.location(f"s3://{BUCKET}/unit/exp/")
    assert where == f"s3://{BUCKET}/unit/exp" and storage.join(where, "a.json") == f"s3://{BUCKET}/unit/exp/a.json"
    storage.makedirs(where)
    storage.write_text(storage.join(where, "a.json"), '{"a": 1}')
    assert keys(s3, prefix="unit/") == ["unit/exp/a.json"]
    assert storage.read_text(storage.join(where, "a.json")) == '{"a": 1}'
    assert storage.is_file(storage.join(where, "a.json")) and storage.is_dir(where)
    assert not storage.exists(storage.join(where, "missing.json"))
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(where, "missing.json"))
    with storage.local_dir(storage.join(where, "report"), upload=True) as d:  # nothing there yet: empty
        assert not any(d.iterdir())
        (d / "p.png").write_bytes(b"png")
    assert not d.exists()
    assert keys(s3, prefix="unit/exp/report") == ["unit/exp/report/p.png"]
    with storage.local_dir(where) as d:
        assert sorted(p.name for p in d.rglob("*") if p.is_file()) == ["a.json", "p.png"]
    storage.remove(storage.join(where, "a.json"))
    storage.remove(storage.join(where, "a.json"))  # gone already: no error
    assert keys(s3, prefix="unit/exp/a") == []
    assert not (tmp_path / "s3:").exists() and not any(tmp_path.iterdir())  # nothing local


def test_the_keeper_deletes_in_the_bucket_and_the_summary_names_checkpoints_by_uri(s3: dict[str, str]) -> None:
    from pyarrow.fs import FileSystem
    from ray.tune import Checkpoint

    from gridrun.checkpoints import CheckpointKeeper

    class Trial:
        trial_id, last_result = "t1", {}

    exp = f"s3://{BUCKET}/keep/exp-1"
    fs, root = FileSystem.from_uri(exp)
    keeper, trial = CheckpointKeeper(1), Trial()
    for i, objective in enumerate([0.5, 0.1, 0.2]):
        path = f"{root}/t1/checkpoint_{i:06d}"
        fs.open_output_stream(f"{path}/adapter/adapter_config.json").close()
        trial.last_result = {"objective": objective, "samples_seen": 8 * (i + 1)}
        keeper.on_checkpoint(0, [trial], trial, Checkpoint(path, filesystem=fs))
    # the best (0) and the latest (2) stay; 1 is deleted from the bucket
    kept = [f"keep/exp-1/t1/checkpoint_00000{i}/adapter/adapter_config.json" for i in (0, 2)]
    assert keys(s3, prefix="keep/") == kept
    best = keeper.best("t1")
    assert best is not None
    assert storage.checkpoint_location(exp, best.checkpoint) == f"{exp}/t1/checkpoint_000000"
    assert storage.checkpoint_location("/local/exp", best.checkpoint) == best.path  # local: the path as Tune has it


def test_validate_refuses_a_scheme_nothing_opens_in_one_line() -> None:
    r = run_cli("validate", str(FORGETTING), "--set", "tracking.storage=s4://gridrun/exp")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "tracking.storage: no filesystem for 's4://gridrun/exp'" in err, err
    assert "s3://" in err  # says what it can open
    with pytest.raises(GridrunError, match="names no bucket"):
        storage.check_storage("s3:///exp")


def test_validate_deep_refuses_a_bucket_it_cannot_list(s3: dict[str, str], tmp_path: Path) -> None:
    # the fixture points this process's environment, which the commands inherit, at the server
    base = ["--set", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    r = run_cli("validate", str(FORGETTING), *base, "--set", "tracking.storage=s3://no-such-bucket/exp", "--deep")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "tracking.storage: cannot list s3://no-such-bucket/exp" in err, err
    assert err.endswith("(bucket or container 'no-such-bucket' does not exist)"), err
    ok = run_cli("validate", str(FORGETTING), *base, "--set", f"tracking.storage=s3://{BUCKET}/exp", "--deep")
    assert ok.returncode == 0, ok.stderr
    # the folder readers say the same in one line
    for cmd in (["report"], ["sync"], ["resume"]):
        r = run_cli(*cmd, "s3://no-such-bucket/exp/x")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (cmd, r.stderr)


def test_the_spill_file_goes_to_the_bucket_and_is_replayed_from_it(
    s3: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    """MLflow away at the end of an experiment on s3://: its pending writes are kept in the bucket, next to the
    experiment, and replayed from there exactly once."""
    from mlflow.tracking import MlflowClient

    from gridrun.writer import SPILL_FILE, replay_spill
    from tests.gridrun_tests.test_tracking import Failing, _history, _tracker, _trial

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    real = MlflowClient(uri)
    exp_id = real.create_experiment("spill")
    parent = (exp_id, real.create_run(exp_id).info.run_id)
    spill = f"s3://{BUCKET}/spill/exp-1/{SPILL_FILE}"
    flaky = Failing(real, "log_batch", 10**6)  # gone for the whole run
    t, trial = _tracker((uri, real), parent, flaky, spill_path=spill, drain_s=0.3), _trial()
    t.on_trial_start(0, [trial], trial)
    for i in (1, 2):
        t.on_trial_result(0, [trial], trial, {"objective": i / 10, "samples_seen": 8 * i})
    t.on_trial_complete(0, [trial], trial)
    t.on_experiment_end([trial])
    assert keys(s3, prefix="spill/") == [f"spill/exp-1/{SPILL_FILE}"]
    assert {p.name for p in tmp_path.iterdir()} == {"mlruns.db"}  # nothing spilled locally
    assert replay_spill(spill) == t.pending()  # MLflow is back: each kept write made once
    assert keys(s3, prefix="spill/") == []
    assert _history(real, t.runs["t1"], "objective") == [(8, 0.1), (16, 0.2)]
    assert real.get_run(t.runs["t1"]).info.status == "FINISHED"
