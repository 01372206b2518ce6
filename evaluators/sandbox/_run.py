"""Run untrusted generated code against test cases in a bubblewrap sandbox, as an unprivileged user.

``run_cases`` starts ``bwrap`` (Debian's ``bubblewrap``), which builds the sandbox and then execs a fresh
``python -I -S`` running ``_runner.py``; that interpreter sets the resource limits and the audit hook and runs the
code. Nothing of this process (no ctypes, no open file but the job's) is carried into it. The layers:

* a user namespace and an unprivileged user: the code runs as uid 65534 ("nobody"), which is host uid 65534 too
  (when this process is root, a user namespace made by util-linux ``unshare`` maps it; otherwise bubblewrap maps
  this process's own uid). Root-only files and the kernel's privileged operations are out of reach, and
  ``RLIMIT_NPROC`` binds (the kernel exempts host uid 0 from it);
* new PID, network, IPC, UTS and cgroup namespaces: no network (a loopback of its own), no other process
  visible or reachable, and everything the code starts, ``setsid`` escapees included, dies with the sandbox;
* a mount namespace holding only what the interpreter needs, read-only (its prefix, the system library folders,
  ``ld.so.cache``), a fresh ``/proc`` of the sandbox's PID namespace, ``/dev`` with only ``null``, ``zero`` and
  ``urandom``, and the working folder ``/job``: a tmpfs of ``file_mb`` megabytes, the only place it can write;
* no capabilities, and a seccomp filter (``_seccomp``): ioctl only from a small allow-list; no namespaces,
  mounts, ptrace, BPF, io_uring, keyrings, sockets, System V IPC or file locks;
* resource limits, set by the runner: CPU seconds, address space, file size, open files, and processes
  (``RLIMIT_NPROC``, counted inside the sandbox's user namespace). The wall clock kills the whole sandbox
  (``--die-with-parent``, the PID namespace);
* a memory cgroup of the run's own where the host lets this process make one (``_cgroup``, layer ``memcg``):
  ``memory_mb`` for the whole run, every process and the tmpfs pages together, no swap. Without it memory is
  bounded per process, ``processes * memory_mb`` in total (System V shared memory, outside every rlimit, is
  refused by the seccomp filter either way);
* an audit hook in the runner (process creation, sockets, ctypes, writes outside ``/job``), a tripwire on top.

Where bubblewrap or user namespaces are missing, ``run_cases`` runs the runner directly, with the resource limits
and the audit hook only, and ``isolation()`` says so (``code_exec`` refuses to run so unless told
``isolation: best_effort``). A timeout, crash or refused operation fails the remaining cases; ``run_cases``
never raises, whatever the text: source over ``MAX_SOURCE_CHARS`` or too deep for the compiler is a ``crash``,
NUL bytes or lone surrogates a ``syntax_error``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.sandbox import _cgroup
from evaluators.sandbox._bwrap import SANDBOX_ID, Plan, mounts, userns_fd

__all__ = ["MAX_SOURCE_CHARS", "Limits", "SandboxResult", "isolation", "isolation_problem", "run_cases"]

log = logging.getLogger("gridrun")

RUNNER = Path(__file__).with_name("_runner.py")
#: The working folder (a size-limited tmpfs) and the runner's path, inside the sandbox.
JOB_DIR, RUNNER_IN_SANDBOX = "/job", "/runner/_runner.py"
#: Seconds this side waits past the wall clock before it kills the sandbox: the sandbox's start-up (the
#: runner's own clock starts once it runs) and a runner stuck in a long C call.
_GRACE_S = 2.0
#: Layers that bubblewrap either sets up or fails on; the runner adds those it observes (userns, unprivileged,
#: nocaps, seccomp, nproc).
_BWRAP_LAYERS = ("bwrap", "pidns", "netns", "ipcns", "mountns", "tmpfs")
#: The most of the results (and of bubblewrap's complaints) that is read back.
_MAX_RESULTS_BYTES = 1 << 20
#: The longest source the sandbox takes (characters); longer is a crash, never parsed here.
MAX_SOURCE_CHARS = 1 << 20
_PROBE: tuple[str, str, list[tuple[list[Any], Any]]] = ("def f():\n    return 1\n", "f", [([], 1)])


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512  # address space per process, and the whole run's memory where a cgroup is available
    file_mb: int = 1  # per file, and the whole working folder
    processes: int = 4  # processes and threads at once, the runner's own included


@dataclass
class SandboxResult:
    passed: list[bool]
    status: str  # ok | timeout | crash | no_function | syntax_error
    detail: str = ""
    # the isolation in force: bwrap pidns netns ipcns mountns tmpfs userns unprivileged nocaps seccomp nproc
    layers: tuple[str, ...] = field(default=())


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
    return _run_cases(code, function, cases, limits or Limits(), audit_hook, _probe()[0])


@functools.cache
def isolation() -> tuple[str, ...]:
    """The isolation layers the sandbox gets on this machine (probed once by running a trivial job)."""
    return _probe()[1]


def isolation_problem() -> str:
    """Why the sandbox lacks bubblewrap or seccomp here, in one line; empty when it has both."""
    return _probe()[2]


# ---- the run ----
def _run_cases(
    code: str, function: str, cases: list[tuple[list[Any], Any]], limits: Limits, audit_hook: bool, bwrap: bool
) -> SandboxResult:
    failed = [False] * len(cases)
    if not isinstance(code, str) or len(code) > MAX_SOURCE_CHARS:
        what = f"{len(code):,} characters" if isinstance(code, str) else type(code).__name__
        return SandboxResult(failed, "crash", f"source of {what}; the sandbox takes str up to {MAX_SOURCE_CHARS:,}")
    try:
        compile(code, "candidate.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes, lone surrogates (UnicodeEncodeError)
        return SandboxResult(failed, "syntax_error", str(e)[:200])
    except (RecursionError, MemoryError, OverflowError) as e:  # nesting too deep for the compiler, or too much
        return SandboxResult(failed, "crash", f"{type(e).__name__}: {e}"[:300])
    try:
        job = json.dumps(
            {
                "code": code,
                "function": function,
                "cases": [[list(a), e] for a, e in cases],
                "limits": limits.__dict__,
                "audit_hook": audit_hook,
            }
        ).encode()
        return _run(job, len(cases), limits, bwrap)
    except (OSError, ValueError, TypeError, RecursionError, subprocess.SubprocessError) as e:  # it never started
        return SandboxResult(failed, "crash", f"sandbox: {type(e).__name__}: {e}"[:300])


def _run(job: bytes, n: int, limits: Limits, bwrap: bool) -> SandboxResult:
    """Start the sandbox on ``job``, wait for it (killing it at the wall clock), read its results."""
    own: list[int] = []  # descriptors to close here once the sandbox has started
    keep: list[int] = []  # descriptors to read back from, closed at the end
    workdir = None
    group = _cgroup.create(limits.memory_mb, limits.processes)  # the run's memory in total, where the host allows
    try:
        job_fd = _memfd("gridrun-job", job)
        own.append(job_fd)
        out_fd = _memfd("gridrun-results", b"")
        err_fd = _memfd("gridrun-stderr", b"")
        keep += [out_fd, err_fd]
        runner_args = [str(job_fd), str(out_fd)]
        if bwrap:
            argv, extra_fds, popen_kw = _bwrap_command(limits, runner_args)
            own += extra_fds
        else:  # best effort: the runner on its own, in a temporary folder of this machine
            workdir = tempfile.mkdtemp(prefix="gridrun-sandbox-")
            argv = [sys.executable, "-I", "-S", str(RUNNER), *runner_args]
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
            popen_kw = {"cwd": workdir, "env": env}
        proc = subprocess.Popen(
            group.wrap(argv) if group else argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_fd,
            pass_fds=[*own, out_fd],
            start_new_session=True,
            **popen_kw,
        )
        for fd in own:
            os.close(fd)
        own.clear()
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap: its sandbox dies with it (--die-with-parent)
            proc.wait()
        text = os.pread(out_fd, _MAX_RESULTS_BYTES, 0).decode("utf-8", errors="replace")
        complaint = os.pread(err_fd, 4096, 0).decode("utf-8", errors="replace")
        base = (*(_BWRAP_LAYERS if bwrap else ()), *(("memcg",) if group else ()))
        oom = group is not None and group.oom_killed()
        return _read_results(text, n, timed_out, proc.returncode, complaint, base, oom)
    finally:
        for fd in own + keep:
            os.close(fd)
        if workdir:
            _remove(workdir)
        if group and (problem := group.remove()):
            log.warning("sandbox: %s", problem)


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start (close-on-exec until passed on)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove(folder: str) -> None:
    """Delete the best-effort folder whatever the code left in it (deep trees, odd permissions); never raises."""
    try:
        shutil.rmtree(folder)
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--", folder], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _read_results(
    text: str, n: int, timed_out: bool, returncode: int, complaint: str, base_layers: tuple[str, ...], oom: bool
) -> SandboxResult:
    passed: list[bool] = []
    layers: tuple[str, ...] | None = None
    status, detail = "ok", ""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        if "ok" in rec:
            passed.append(rec["ok"] is True)
        elif "layers" in rec and isinstance(rec["layers"], list) and layers is None:
            layers = tuple(str(x) for x in rec["layers"])
        elif "status" in rec and status == "ok":
            status, detail = str(rec.get("status", "crash"))[:40], str(rec.get("detail", ""))[:500]
    passed = passed[:n]
    # bubblewrap passes on how the runner ended: its exit code, or 128 + the signal that killed it
    killed_by = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if oom and status == "ok" and len(passed) < n:  # the kernel killed it (SIGKILL) for the run's memory
        status, detail = "crash", "memory limit of the run (cgroup)"
    elif timed_out and status == "ok":
        status, detail = "timeout", "wall clock (sandbox killed)"
    elif status == "ok" and len(passed) < n:
        # stopped mid-way by a limit: CPU seconds (SIGXCPU, or SIGKILL at the hard limit), memory, or a crash
        if killed_by in (signal.SIGXCPU, signal.SIGKILL):
            status, detail = "timeout", "CPU limit"
        else:
            status = "crash"
            detail = f"killed by signal {killed_by}" if killed_by > 0 else f"sandbox exited with {returncode}"
            if layers is None and complaint.strip():  # it never ran: bubblewrap or the runner said why
                detail = complaint.strip().splitlines()[-1][:300]
    passed += [False] * (n - len(passed))
    return SandboxResult(passed, status, detail, (*base_layers, *(layers or ())) if layers is not None else ())


# ---- the bubblewrap command ----
def _bwrap_command(limits: Limits, runner_args: list[str]) -> tuple[list[str], list[int], dict[str, Any]]:
    """bwrap's argument list, the descriptors it needs (the caller closes them), and Popen's extra arguments."""
    plan = _plan()
    assert plan.bwrap is not None
    fds: list[int] = []
    try:
        args = [plan.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        popen_kw: dict[str, Any] = {}
        if os.geteuid() == 0:
            # bwrap run by root maps the sandbox's user to host root; a user namespace made beforehand maps 65534
            # to 65534 instead (and 0 to 0 for bwrap's own set-up, which reads the interpreter wherever it is).
            # The runner starts as that namespace's root with just enough to become 65534, and re-execs itself.
            ns = userns_fd(plan)
            fds.append(ns)
            args += ["--userns", str(ns), "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            runner_args = [*runner_args, "--drop", str(SANDBOX_ID)]
            popen_kw = {"group": SANDBOX_ID, "extra_groups": []}
        else:
            args += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID)]
        if plan.seccomp:
            from evaluators.sandbox import _seccomp

            fds.append(_seccomp.memfd())
            args += ["--seccomp", str(fds[-1])]
        fds.append(_memfd("gridrun-runner", RUNNER.read_bytes()))
        args += ["--perms", "0755", "--dir", os.path.dirname(RUNNER_IN_SANDBOX)]
        args += ["--perms", "0444", "--ro-bind-data", str(fds[-1]), RUNNER_IN_SANDBOX]
        args += plan.mounts
        args += ["--perms", "0777", "--size", str(limits.file_mb << 20), "--tmpfs", JOB_DIR, "--chdir", JOB_DIR]
        args += ["--remount-ro", "/", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
        args += ["--setenv", "HOME", JOB_DIR, "--setenv", "TMPDIR", JOB_DIR]
        args += ["--", plan.exe, "-I", "-S", RUNNER_IN_SANDBOX, *runner_args]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return args, fds, popen_kw


@functools.cache
def _plan() -> Plan:
    bwrap, unshare = shutil.which("bwrap"), shutil.which("unshare")
    problem = ""
    if bwrap is None:
        problem = "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    elif os.geteuid() == 0 and unshare is None:
        bwrap, problem = None, "util-linux unshare is not installed (needed as root)"
    try:
        from evaluators.sandbox import _seccomp

        _seccomp.bpf()
        seccomp = True
    except (ImportError, OSError, RuntimeError, ValueError) as e:
        seccomp = False
        problem = problem or f"no seccomp filter: pyseccomp or libseccomp is missing ({e})"
    exe = os.path.realpath(sys.executable)
    return Plan(bwrap, unshare, exe, tuple(mounts(exe)), seccomp, problem)


@functools.cache
def _probe() -> tuple[bool, tuple[str, ...], str]:
    """(bubblewrap works here, the layers a trivial job gets, why bubblewrap or seccomp is missing or "")."""
    plan = _plan()
    problem = plan.problem
    if plan.bwrap is not None:
        r = _run_cases(*_PROBE, Limits(), True, True)
        if r.passed == [True]:
            return True, r.layers, problem
        problem = f"bubblewrap could not start the sandbox: {r.detail or r.status}"
    r = _run_cases(*_PROBE, Limits(), True, False)
    return False, r.layers, problem
