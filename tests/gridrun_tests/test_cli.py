"""Bad inputs through the real CLI: one line on stderr, exit code 2, nothing started or recorded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import FORGETTING, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_validate_ok() -> None:
    r = run_cli("validate", str(FORGETTING))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: forgetting-tiny")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=1"], "unknown key 'train.lrr' in train; known keys:"),
        (["train.lr=fast"], "train.lr: Input should be a valid number"),
        (["search.space.train.lr.low=0.5"], "search.space.train.lr: low (0.5) > high (0.02)"),
        (["data.sample_ratio=1.2"], "data.sample_ratio: Input should be less than or equal to 1"),
        (
            ["search.space.data.sample_ratio.high=2"],
            "search.space.data.sample_ratio.high: 2.0 is not a valid",
        ),
        (["data.task=/nonexistent/train.jsonl"], "data.task: data file not found: /nonexistent/train.jsonl"),
        (
            ["data.task=builtin:nope"],
            "data.task: unknown builtin task 'builtin:nope'; known: builtin:json-format",
        ),
        (
            ["model.name=builtin:huge"],
            "model.name: unknown builtin model 'builtin:huge'; known: builtin:tiny-general",
        ),
        (["evaluate.evaluators=[json_fromat]"], "evaluate.evaluators: unknown evaluator 'json_fromat'"),
        (["objective.metric=task/f1"], "objective.metric: task/f1 is not reported by evaluators json_format"),
        (["resources.gpu=1"], "resources.gpu: 1.0 GPU per trial requested, but this machine has no CUDA GPU"),
        # tests run with HF_HUB_OFFLINE=1 (conftest): a hub model not in the local cache fails before Ray starts
        (
            ["model.name=Qwen/NoSuchModel"],
            "model.name: 'Qwen/NoSuchModel' is not in the local hub cache and the hub is switched off here",
        ),
    ],
)
def test_launch_rejects_bad_input_before_starting_anything(tmp_path: Path, overrides: list[str], expected: str) -> None:
    args = ["launch", str(FORGETTING)] + [a for o in overrides for a in ("--set", o)]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert list(tmp_path.iterdir()) == []  # no mlruns.db, no results folder: nothing was started


def test_unreachable_mlflow_server(tmp_path: Path) -> None:
    r = run_cli("launch", str(FORGETTING), "--tracking-uri", f"http://127.0.0.1:{_free_port()}", cwd=tmp_path)
    assert r.returncode == 2
    assert "tracking.uri: MLflow server at http://127.0.0.1:" in r.stderr and "unreachable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_unreachable_tracking_folder(tmp_path: Path) -> None:
    r = run_cli("launch", str(FORGETTING), "--tracking-uri", "sqlite:////nonexistent/dir/mlruns.db", cwd=tmp_path)
    assert r.returncode == 2 and "tracking.uri: folder /nonexistent/dir does not exist" in r.stderr


def test_unreachable_ray_address(tmp_path: Path) -> None:
    r = run_cli("launch", str(FORGETTING), "--address", f"127.0.0.1:{_free_port()}", cwd=tmp_path)
    assert r.returncode == 2
    assert "resources.address: Ray cluster at 127.0.0.1:" in r.stderr and "unreachable" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_spec_file_and_bad_yaml(tmp_path: Path) -> None:
    r = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "spec file not found" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {lr: [1,\n")
    r = run_cli("validate", str(bad))
    assert r.returncode == 2 and "not valid YAML (line" in r.stderr


def test_report_of_a_folder_that_is_no_experiment(tmp_path: Path) -> None:
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and "no gridrun summary" in r.stderr


@pytest.mark.parametrize("args", [["report", "--from-mlflow", "0123abcd"], ["ui", "--port", "9"]])
def test_read_only_commands_never_create_a_store(tmp_path: Path, args: list[str]) -> None:
    """Run from a folder with no mlruns.db: one line naming the absolute path looked at, and nothing created."""
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no MLflow store at {tmp_path.resolve()}/mlruns.db" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_validate_checks_an_absolute_tracking_uri(tmp_path: Path) -> None:
    r = run_cli("validate", str(FORGETTING), "--set", "tracking.uri=sqlite:///sub/mlruns.db", cwd=tmp_path)
    assert r.returncode == 2 and f"folder {tmp_path.resolve()}/sub does not exist" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["evaluate.options.json_format.strictnes=lenient"],
            "evaluate.options.json_format: unknown option 'strictnes'",
        ),
        (["evaluate.options.json_format.strictness=bogus"], "strictness: 'strict' or 'lenient', got 'bogus'"),
        (["data.options.hard_negative_prob=2"], "data.options: hard_negative_prob must be in [0, 1], got 2"),
        (
            ["search.space.data.options.hard_negative_prob={type: float, low: 0.1, high: 1.5}"],
            "data.options: hard_negative_prob must be in [0, 1], got 1.5",
        ),
        (["evaluate.evaluators=[nope]"], "evaluate.evaluators: unknown evaluator 'nope'"),
        (["data.task=builtin:nope"], "data.task: unknown builtin task 'builtin:nope'"),
        # the tracking URI's scheme, form and local folder need no server: checked offline too
        (["tracking.uri=ftp://127.0.0.1/mlruns"], "tracking.uri: MLflow has no tracking store for 'ftp://"),
        (["tracking.uri=sqlite:////nonexistent/dir/mlruns.db"], "tracking.uri: folder /nonexistent/dir does not"),
        (["tracking.uri=http://"], "tracking.uri: expected http(s)://host[:port], got 'http://'"),
    ],
)
def test_validate_checks_what_trials_would_meet(overrides: list[str], expected: str) -> None:
    """Plain `gridrun validate` (no --deep) catches bad evaluator and generator options before any trial runs."""
    r = run_cli("validate", str(FORGETTING), *[a for o in overrides for a in ("--set", o)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr


def test_help_shows_an_example_and_where_outputs_go_and_version() -> None:
    from importlib.metadata import version

    for args in (["--help"], ["launch", "--help"]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert "example:\n  gridrun" in r.stdout and "gridrun launch search_spaces/forgetting.yaml" in r.stdout
        assert "relative to the folder you run in" in r.stdout
        assert "gridrun_results/" in r.stdout and "mlruns.db" in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gridrun {version('gridrun')}"
