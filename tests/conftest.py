"""Shared fixtures: the built-in tiny model (built once per recipe in the user cache) and small specs."""

from __future__ import annotations

import os
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
