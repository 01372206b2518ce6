"""Run untrusted generated code against test cases in a separate, limited process.

Layers (each catches what the others might miss):
  * a fresh ``python -I -S`` process in its own session and a temporary working folder, with a minimal
    environment (no proxies, no HOME, no PYTHONPATH);
  * resource limits: CPU seconds, address space (memory), file size, open files, processes (the last one is not
    enforced for root by the kernel, hence the next layer);
  * a Python audit hook installed before the code runs that refuses process creation (fork, exec, spawn,
    subprocess, os.system), sockets (connect, bind, getaddrinfo), ctypes, and any write, delete or rename
    outside the working folder;
  * a wall-clock timeout after which the whole process group is killed.
A timeout, crash or refused operation fails the remaining cases; it never raises in the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Limits", "SandboxResult", "run_cases"]


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


_RUNNER = textwrap.dedent("""
    import json, os, resource, sys
    cfg = json.load(open("job.json"))
    lim = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] << 20, lim["memory_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] << 20, lim["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    HOME = os.path.realpath(os.getcwd())
    out = open("results.jsonl", "w", buffering=1)
    BLOCK = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
             "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto", "socket.__new__",
             "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "os.putenv", "os.unsetenv",
             "sys.setrecursionlimit")
    FORBIDDEN_MODULES = ("ctypes", "_ctypes", "socket", "_socket", "subprocess", "multiprocessing",
                         "_posixsubprocess")
    PATHS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
             "os.truncate", "shutil.rmtree", "os.utime")
    def inside(p):
        try:
            return os.path.realpath(os.fspath(p)).startswith(HOME + os.sep)
        except TypeError:
            return False
    armed = False
    def hook(event, args):
        if not armed:
            return
        if event in BLOCK:
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working folder")
        if event in PATHS and args and not inside(args[0]):
            raise PermissionError("sandbox: " + event + " outside the working folder")
        if event == "import" and args and str(args[0]).split(".")[0] in FORBIDDEN_MODULES:
            raise PermissionError("sandbox: import of " + str(args[0]) + " is not allowed")
    sys.addaudithook(hook)
    ns = {"__name__": "candidate"}
    armed = True
    try:
        exec(compile(cfg["code"], "candidate.py", "exec"), ns)
    except BaseException as e:
        armed = False
        out.write(json.dumps({"status": "crash", "detail": type(e).__name__ + ": " + str(e)[:200]}) + "\\n")
        sys.exit(0)
    fn = ns.get(cfg["function"])
    if not callable(fn):
        armed = False
        out.write(json.dumps({"status": "no_function"}) + "\\n")
        sys.exit(0)
    for args, expected in cfg["cases"]:
        try:
            got = fn(*args)
            ok = got == expected or (isinstance(expected, float) and isinstance(got, (int, float))
                                     and abs(got - expected) < 1e-6)
        except BaseException as e:
            ok = False
        armed = False
        out.write(json.dumps({"ok": bool(ok)}) + "\\n")
        armed = True
""")


def run_cases(
    code: str, function: str, cases: list[tuple[list[Any], Any]], limits: Limits | None = None
) -> SandboxResult:
    """Run ``function`` from ``code`` on each ``(args, expected)`` case; per-case pass/fail, never raises."""
    limits = limits or Limits()
    try:
        compile(code, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:
        return SandboxResult([False] * len(cases), "syntax_error", str(e)[:200])
    with tempfile.TemporaryDirectory(prefix="gridrun-sandbox-") as work:
        job = {"code": code, "function": function, "cases": [[list(a), e] for a, e in cases], "limits": limits.__dict__}
        Path(work, "job.json").write_text(json.dumps(job))
        Path(work, "runner.py").write_text(_RUNNER)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "runner.py"],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        status = "ok"
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it managed to start
            proc.wait()
        passed: list[bool] = []
        detail = ""
        results = Path(work, "results.jsonl")
        lines = results.read_text().splitlines() if results.is_file() else []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "ok" in rec:
                passed.append(bool(rec["ok"]))
            else:
                status, detail = rec.get("status", "crash"), rec.get("detail", "")
        if status == "ok" and len(passed) < len(cases):
            status = "crash" if proc.returncode else "ok"  # killed by a limit (CPU, memory) mid-way
            if proc.returncode == -signal.SIGXCPU:
                status, detail = "timeout", "CPU limit"
            elif proc.returncode and proc.returncode < 0:
                detail = f"killed by signal {-proc.returncode}"
        passed += [False] * (len(cases) - len(passed))
        return SandboxResult(passed, status, detail)
