"""Run untrusted generated code against test cases in a separate, isolated, limited process.

``run_cases`` starts ``python -I -S evaluators/sandbox/_runner.py`` in a fresh temporary folder, in its own
session, with a minimal environment (no proxies, no HOME, no PYTHONPATH), and reads back one pass/fail per case.
The runner isolates itself before the code runs (see its docstring for the layers): network and PID
namespaces, Landlock (writes only inside its folder, no TCP, no signals out), resource limits, and an audit
hook. The runner enforces the wall clock by killing the sandbox's PID namespace; this side kills the whole
session as well, shortly after, in case the runner itself is stuck.

A timeout, crash or refused operation fails the remaining cases; ``run_cases`` never raises.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Limits", "SandboxResult", "isolation", "run_cases"]

RUNNER = Path(__file__).with_name("_runner.py")
#: Seconds this side waits past the runner's own wall clock before killing the session.
_GRACE_S = 2.0


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512
    file_mb: int = 1


@dataclass
class SandboxResult:
    passed: list[bool]
    status: str  # ok | timeout | crash | no_function | syntax_error
    detail: str = ""
    layers: tuple[str, ...] = field(default=())  # OS isolation in force: netns, pidns, landlock<abi>


def run_cases(
    code: str,
    function: str,
    cases: list[tuple[list[Any], Any]],
    limits: Limits | None = None,
    *,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``function`` from ``code`` on each ``(args, expected)`` case; per-case pass/fail, never raises.

    ``audit_hook=False`` leaves out the in-process layer: tests use it to check that the kernel's layers hold
    on their own.
    """
    limits = limits or Limits()
    try:
        compile(code, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        return SandboxResult([False] * len(cases), "syntax_error", str(e)[:200])
    work = tempfile.mkdtemp(prefix="gridrun-sandbox-")
    try:
        job = {
            "code": code,
            "function": function,
            "cases": [[list(a), e] for a, e in cases],
            "limits": limits.__dict__,
            "audit_hook": audit_hook,
        }
        Path(work, "job.json").write_text(json.dumps(job))
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNNER)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        status, detail = "ok", ""
        try:
            proc.wait(timeout=limits.wall_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            status, detail = "timeout", "wall clock (runner killed)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the runner and anything left in its session
            proc.wait()
        return _read_results(_read_bounded(Path(work, "results.jsonl")), len(cases), status, detail, proc.returncode)
    finally:
        _remove(work)


#: The most of results.jsonl that is read (the code can write to its own folder, results file included).
_MAX_RESULTS_BYTES = 1 << 20


def _read_bounded(path: Path) -> str:
    """The results file's text, if it is a regular file (never a symlink or a FIFO the code put there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, _MAX_RESULTS_BYTES).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def _remove(folder: str) -> None:
    """Delete the sandbox folder whatever the code left in it (deep trees, odd permissions); never raises."""
    try:
        shutil.rmtree(folder)
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--", folder], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_results(text: str, n: int, status: str, detail: str, returncode: int | None) -> SandboxResult:
    passed: list[bool] = []
    layers: tuple[str, ...] = ()
    killed_by: int | None = None
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        if "ok" in rec:
            passed.append(rec["ok"] is True)
        elif "layers" in rec and isinstance(rec["layers"], list):
            layers = tuple(str(x) for x in rec["layers"])
        elif "signal" in rec:
            killed_by = rec["signal"] if isinstance(rec["signal"], int) else None
        elif status == "ok":
            status, detail = str(rec.get("status", "crash"))[:40], str(rec.get("detail", ""))[:300]
    passed = passed[:n]
    if status == "ok" and len(passed) < n:
        # stopped mid-way by a limit: CPU seconds (SIGXCPU, or SIGKILL at the hard limit), memory, or a crash
        if killed_by in (signal.SIGXCPU, signal.SIGKILL):
            status, detail = "timeout", "CPU limit"
        else:
            status = "crash"
            detail = f"killed by signal {killed_by}" if killed_by else f"runner exited with {returncode}"
    passed += [False] * (n - len(passed))
    return SandboxResult(passed, status, detail, layers)


@functools.cache
def isolation() -> tuple[str, ...]:
    """The OS isolation layers the sandbox gets on this machine (probed once by running a trivial job)."""
    return run_cases("def f():\n    return 1\n", "f", [([], 1)]).layers
