"""Where bubblewrap or user namespaces are missing: the sandbox says why, ``code_exec`` refuses in one line under
``isolation: strict``, and ``best_effort`` still runs code (resource limits and the audit hook only)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

import evaluators.code_exec as ce
from evaluators.code_exec import CodeExecEvaluator
from evaluators.sandbox import Limits
from evaluators.sandbox import _run as sandbox_run

GOOD = "def f(x):\n    return x\n"


def test_without_bubblewrap_the_plan_says_why(monkeypatch) -> None:
    monkeypatch.setattr(sandbox_run.shutil, "which", lambda name: None)
    plan = sandbox_run._plan.__wrapped__()
    assert plan.bwrap is None
    assert plan.problem.startswith("bubblewrap is not installed (Debian: apt-get install bubblewrap)")


def test_a_bubblewrap_that_cannot_start_falls_back_and_says_why(monkeypatch, tmp_path: Path) -> None:
    """As where unprivileged user namespaces are switched off: bwrap exits at once with its reason."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    broken = dataclasses.replace(sandbox_run._plan(), bwrap=str(fake))
    monkeypatch.setattr(sandbox_run, "_plan", lambda: broken)
    works, layers, problem = sandbox_run._probe.__wrapped__()
    assert not works and "bwrap" not in layers and "seccomp" not in layers
    assert problem == "bubblewrap could not start the sandbox: bwrap: No permissions to create a new namespace"


def test_best_effort_still_runs_code_with_limits_and_the_hook() -> None:
    run = sandbox_run._run_cases
    r = run(GOOD, "f", [([1], 1), ([2], 3)], Limits(), True, False)
    assert (r.passed, r.status) == ([True, False], "ok") and "bwrap" not in r.layers
    r = run("def f(x):\n    while True:\n        pass\n", "f", [([1], 1)], Limits(wall_s=3, cpu_s=1), True, False)
    assert (r.passed, r.status) == ([False], "timeout")
    r = run("import subprocess\ndef f(x):\n    return 1\n", "f", [([1], 1)], Limits(), True, False)
    assert (r.status, r.detail) == ("crash", "PermissionError: sandbox: import of subprocess is not allowed")


def test_strict_refuses_in_one_line_and_best_effort_warns(monkeypatch, caplog) -> None:
    monkeypatch.setattr(ce, "isolation_layers", lambda: ("nocaps",))
    monkeypatch.setattr(ce, "isolation_problem", lambda: "bubblewrap is not installed\n(Debian: bubblewrap)")
    with pytest.raises(ValueError) as e:
        CodeExecEvaluator()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "evaluate.options.code_exec.isolation: this machine gives the code sandbox no bwrap and no userns and no "
        "unprivileged and no seccomp (bubblewrap is not installed (Debian: bubblewrap)) (has: nocaps);"
    )
    assert msg.endswith("set isolation: best_effort to run it so anyway")
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        assert CodeExecEvaluator(isolation="best_effort").limits.wall_s == 5.0
    assert "sandbox without bwrap and userns and unprivileged and seccomp" in caplog.text


def test_strict_accepts_the_sandbox_this_machine_has() -> None:
    layers = sandbox_run.isolation()
    if not set(ce.REQUIRED_LAYERS) <= set(layers):
        pytest.skip(f"no bubblewrap sandbox here: {sandbox_run.isolation_problem()}")
    assert CodeExecEvaluator().limits == Limits()
