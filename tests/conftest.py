"""Shared fixtures: the built-in tiny model (built once per recipe in the user cache) and small specs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORGETTING = ROOT / "search_spaces" / "forgetting.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with more ``slow`` tests (the real launches and drills) first, each module's tests kept together and
    in order: `make test`'s xdist workers take a module at a time in this order, so the long ones start at once and
    the many quick modules fill both workers at the end, not one long module alone."""

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    slow: dict[str, int] = {}
    for item in items:
        slow[module(item)] = slow.get(module(item), 0) + bool(item.get_closest_marker("slow"))
    first = {m: i for i, m in enumerate(slow)}
    items.sort(key=lambda item: (-slow[module(item)], first[module(item)]))


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


def _session_pids(sid: int) -> list[int]:
    """Every process in session ``sid`` (a Ray node started in a session of its own: its servers and workers)."""
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 for the whole session, which launches join through ``resources.address`` (the
    ``on_cluster`` fixture); returns its address. A local start costs every launch seconds of Ray's own processes
    starting and stopping, which no test that joins is about (test_storage_e2e and the drills keep the local
    start: their trials need their own environment). Loopback only, as gridrun's local start: Ray's local-only
    switch keeps it from swapping 127.0.0.1 for the interface address. Token authentication with the user's
    token (``ray get-auth-token --generate`` makes one where none is). Stopped at the session's end by its session
    id, never with ``ray stop`` (which stops every Ray on the machine)."""
    import socket
    import tempfile

    import psutil

    ray = str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's local-only switch: every address on 127.0.0.1
        "RAY_AUTH_MODE": "token",
        # the trials' Arrow copies of local data sets (the tests' stand-ins), not the user's cache
        "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("ray-hf-datasets")),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, check=True, timeout=60)
    temp = tempfile.mkdtemp(prefix="grt", dir="/tmp")  # short: Ray's socket paths live under it
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    args = ["--head", "--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--port={port}"]
    with log.open("w") as f:
        head = subprocess.Popen(
            [ray, "start", *args, "--include-dashboard=false", f"--temp-dir={temp}"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its servers and workers stay in this session: the teardown stops exactly them
        )
    try:
        if head.wait(timeout=180) != 0:  # `ray start` returns once the node is up
            pytest.fail(f"ray start --head failed:\n{log.read_text()[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        # SIGKILL: the cluster holds nothing to keep, and its GCS server outlives a SIGTERM by Ray's grace period
        procs = []
        for pid in _session_pids(head.pid):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.kill()
                procs.append(proc)
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def on_cluster(ray_cluster: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The override that makes a ``gridrun launch`` command join the session's Ray cluster, the way a user joins one
    (``resources.address=host:port``); the commands this test runs get the cluster's token mode. Not for a launch
    in the test's own process: Ray reads the token mode once, when it is first imported."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    return f"resources.address={ray_cluster}"
