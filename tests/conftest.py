"""Shared fixtures: the built-in tiny model (built once per recipe in the user cache) and small specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORGETTING = ROOT / "search_spaces" / "forgetting.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from gridrun.builtin.tiny_model import ensure_tiny_general

    return ensure_tiny_general()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store whose schema is made once a session: MLflow runs its ~50 schema migrations
    for every new store (seconds each time on a busy machine), which no test here is about. test_e2e's launch
    still makes its store from nothing."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables and the Default experiment
    return path


def copy_store(template: Path, folder: Path, name: str = "mlruns.db") -> str:
    """``template`` copied to ``folder/name`` (what a launch there would create); returns its tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / name)
    return f"sqlite:///{folder / name}"


@pytest.fixture
def mlflow_store(tmp_path: Path, mlflow_template: Path) -> str:
    """``tmp_path/mlruns.db``, an empty MLflow store (the default ``sqlite:///mlruns.db`` of a command run in
    ``tmp_path``), ready without its schema migrations; returns its URI."""
    return copy_store(mlflow_template, tmp_path)


#: Overrides that make a trial take seconds: small data, few evals, short generations.
TINY = [
    "data.train_size=64",
    "data.eval_size=8",
    "train.batch_size=8",
    "train.epochs=1",
    "train.eval_every=4",
    "evaluate.max_new_tokens=24",
    "forgetting.samples=8",
    "forgetting.seq_len=64",
]


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """The shipped default spec shrunk to seconds, tracking and storage inside tmp_path."""
    from gridrun.spec import load_spec

    return load_spec(
        FORGETTING,
        [*TINY, f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", f"tracking.storage={tmp_path}/results"],
    )


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridrun.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def data_section(task: str, **overrides: object):
    """A spec ``data`` section for the loaders: DataSpec's defaults, small sizes, ``overrides`` validated."""
    from gridrun.spec import DataSpec

    return DataSpec.model_validate({"task": task, "train_size": 64, "eval_size": 4, **overrides})
