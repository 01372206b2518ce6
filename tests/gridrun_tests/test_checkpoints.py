"""Checkpoint retention keeps the best by objective, the latest, and whatever a saved snapshot names."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
from ray.tune import Checkpoint

from gridrun.checkpoints import CheckpointKeeper


class Trial:
    """What the keeper reads of a Tune trial: its id and the result reported with the checkpoint."""

    def __init__(self, tid: str = "t1") -> None:
        self.trial_id, self.last_result = tid, {}


def _save(keeper: CheckpointKeeper, trial: Trial, root: Path, i: int, objective: float, fs=None) -> Checkpoint:
    name = f"{trial.trial_id}/checkpoint_{i:06d}"
    (root / name / "adapter").mkdir(parents=True)
    ckpt = Checkpoint(name, filesystem=fs) if fs is not None else Checkpoint(str(root / name))
    trial.last_result = {"objective": objective, "samples_seen": 8 * (i + 1), "task/x": 1.0, "config": {"a": 1}}
    keeper.on_checkpoint(0, [trial], trial, ckpt)
    return ckpt


def _on_disk(root: Path, tid: str = "t1") -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (root / tid).iterdir())


def test_keeps_the_best_and_the_latest(tmp_path: Path) -> None:
    keeper, trial = CheckpointKeeper(2), Trial()
    for i, obj in enumerate([0.5, 0.6, 0.1, 0.7, 0.2]):
        _save(keeper, trial, tmp_path, i, obj)
    assert _on_disk(tmp_path) == [1, 3, 4]  # best two (0.7, 0.6) and the latest
    best = keeper.best("t1")
    assert best is not None and best.objective == 0.7 and best.metrics["samples_seen"] == 32
    assert "config" not in best.metrics


def test_a_checkpoint_named_by_the_last_snapshot_survives(tmp_path: Path, monkeypatch) -> None:
    """The failure that broke `gridrun resume`: the snapshot names checkpoint 2 (the latest then, and the worst);
    one better checkpoint arrives; Tune's own retention deleted 2, and the restored trial had nothing to load."""
    keeper, trial = CheckpointKeeper(2), Trial()
    for i, obj in enumerate([0.5, 0.6, 0.1]):
        _save(keeper, trial, tmp_path, i, obj)
    state = keeper.get_state()  # Tune writes an experiment snapshot: it names checkpoint 2
    _save(keeper, trial, tmp_path, 3, 0.7)
    assert 2 in _on_disk(tmp_path)
    restored = CheckpointKeeper(2)
    restored.set_state(state)  # the driver died here; resume restores the snapshot's state
    assert [s.path.rsplit("_", 1)[1] for s in restored.saved["t1"]] == ["000001", "000002"]  # 0 was pruned
    # two snapshots and SAFE_S seconds later nothing names 2 any more, and it goes with the next checkpoint
    import gridrun.checkpoints as ck

    later = time.time() + ck.SAFE_S + 1
    monkeypatch.setattr(ck.time, "time", lambda: later)
    keeper.get_state()
    keeper.get_state()
    _save(keeper, trial, tmp_path, 4, 0.2)
    assert _on_disk(tmp_path) == [1, 3, 4]


def test_a_snapshot_whose_upload_lags_keeps_its_checkpoint(tmp_path: Path) -> None:
    """Tune skips an upload while the previous one runs: storage may hold a snapshot older than the last two
    written. Anything a snapshot of the last SAFE_S seconds named stays."""
    keeper, trial = CheckpointKeeper(1), Trial()
    _save(keeper, trial, tmp_path, 0, 0.9)
    _save(keeper, trial, tmp_path, 1, 0.1)
    keeper.get_state()  # S0 names checkpoint 1 (uploaded); the next uploads are skipped
    for i, obj in enumerate([0.2, 0.3, 0.4], start=2):
        _save(keeper, trial, tmp_path, i, obj)
        keeper.get_state()
    _save(keeper, trial, tmp_path, 5, 0.5)
    assert 1 in _on_disk(tmp_path)


def test_non_finite_objectives_are_never_best_and_are_pruned(tmp_path: Path) -> None:
    keeper, trial = CheckpointKeeper(1), Trial()
    for i, obj in enumerate([math.nan, 0.3, math.inf, 0.3]):
        _save(keeper, trial, tmp_path, i, obj)
    best = keeper.best("t1")
    assert best is not None and best.path.endswith("checkpoint_000003")  # a tie goes to the later one
    assert _on_disk(tmp_path) == [3]
    assert CheckpointKeeper(1).best("none") is None


def test_works_on_a_storage_filesystem_that_is_not_the_local_path(tmp_path: Path) -> None:
    """Object stores hand checkpoints as (filesystem, path); nothing may assume the path is a local folder."""
    fs = SubTreeFileSystem(str(tmp_path), LocalFileSystem())
    keeper, trial = CheckpointKeeper(1), Trial()
    for i, obj in enumerate([0.2, 0.1, 0.3]):
        _save(keeper, trial, tmp_path, i, obj, fs=fs)
    assert _on_disk(tmp_path) == [2]
    best = keeper.best("t1")
    assert best is not None and not Path(best.path).is_absolute()
    with best.checkpoint.as_directory() as d:
        assert (Path(d) / "adapter").is_dir()


def test_num_to_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_to_keep"):
        CheckpointKeeper(0)
