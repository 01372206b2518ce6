"""The run's memory in total and the host's file locks: what an outside review found the sandbox leaving open.

System V shared memory outlives a detached process and counts against no resource limit; a memory cgroup per run
bounds everything the run charges, and the seccomp filter refuses System V IPC wherever the cgroup is missing.
A file lock, even a shared one on a read-only handle, would reach the host's own files (the interpreter,
``ld.so.cache``), so the filter refuses ``flock`` and ``fcntl``'s locks. Audit hook off: the kernel's layers hold
on their own.
"""

from __future__ import annotations

import ast
import errno
import fcntl
import os
import sys
import threading

import pytest

from evaluators.sandbox import Limits, _cgroup, isolation, run_cases

pytestmark = pytest.mark.skipif(
    not {"bwrap", "userns", "unprivileged", "seccomp", "nproc"} <= set(isolation()),
    reason="no bubblewrap sandbox here (isolation_problem() says why)",
)


def observe(code: str, limits: Limits | None = None) -> object:
    """What ``g()`` of ``code`` returns inside the sandbox (sent back as the detail of a deliberate exit)."""
    r = run_cases(code + "\nraise SystemExit(repr(g()))\n", "g", [([], None)], limits, audit_hook=False)
    assert r.status == "crash" and r.detail.startswith("SystemExit: "), (r.status, r.detail)
    return ast.literal_eval(r.detail.removeprefix("SystemExit: "))


def test_system_v_ipc_is_refused() -> None:
    """shmget with IPC_CREAT, then shmat and detach, held 256 MB past memory_mb=128, processes=1; semget and
    msgget are refused alike (ctypes: the standard library has no System V wrapper)."""
    code = """
import ctypes
def g():
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for call in (lambda: libc.shmget(0, 256 << 20, 0o1600), lambda: libc.semget(0, 1, 0o1600),
                 lambda: libc.msgget(0, 0o1600)):
        ctypes.set_errno(0)
        out.append((call(), ctypes.get_errno()))
    return out
"""
    assert observe(code, Limits(memory_mb=128, processes=1)) == [(-1, errno.EPERM)] * 3


@pytest.mark.skipif("memcg" not in isolation(), reason="this host gives this process no memory cgroup to divide")
def test_the_run_s_memory_is_bounded_in_total() -> None:
    """Three children of 100 MB each, every one within its own 128 MB address space, are 300 MB for the run: the
    cgroup's 128 MB lets one live at most. The run's cgroup is gone afterwards."""
    code = """
import os
def g():
    r, w = os.pipe()
    kids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            block = bytearray(100 << 20)
            block[::4096] = b"x" * len(block[::4096])  # touched: resident, charged
            os.read(r, 1)  # held until the parent has started every child
            os._exit(0)
        kids.append(pid)
    os.close(w)
    return [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
"""
    codes = observe(code, Limits(processes=4, memory_mb=128))
    assert isinstance(codes, list) and len(codes) == 3
    assert sorted(codes)[:2] == [-9, -9] and set(codes) <= {0, -9}  # SIGKILL from the kernel's OOM killer
    parents = {os.path.dirname(d) for d in _made_dirs()}
    assert not any(name.startswith(f"gridrun-sandbox-{os.getpid()}-") for p in parents for name in os.listdir(p))


def _made_dirs() -> tuple[str, ...]:
    group = _cgroup.create(64, 1)
    assert group is not None
    assert group.remove() == ""
    return group.dirs


def test_a_run_killed_for_the_run_s_memory_is_a_crash_saying_so() -> None:
    """Pages of the working tmpfs belong to no process's address space; the cgroup counts them all the same."""
    if "memcg" not in isolation():
        pytest.skip("this host gives this process no memory cgroup to divide")
    code = (
        "def f():\n"
        "    with open('big', 'wb') as fh:\n"
        "        for _ in range(150):\n"
        "            fh.write(b'x' * (1 << 20))\n"
        "    return 1\n"
    )
    r = run_cases(code, "f", [([], 1)], Limits(memory_mb=64, file_mb=200), audit_hook=False)
    assert (r.status, r.detail, r.passed) == ("crash", "memory limit of the run (cgroup)", [False])
    big_folder = run_cases(code, "f", [([], 1)], Limits(memory_mb=512, file_mb=200), audit_hook=False)
    assert (big_folder.status, big_folder.passed) == ("ok", [True])  # the same code, with room for it


def test_no_file_lock_reaches_a_host_file() -> None:
    """While the candidate tries every kind of lock on host files the sandbox shows, read-only, and would then hold
    them for a second, a host locker polling those files never finds one taken."""
    files = [os.path.realpath(sys.executable), "/etc/ld.so.cache"]
    code = f"""
import errno, fcntl, os, struct, time
def _try(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def g():
    out = []
    for path in {files!r}:
        fd = os.open(path, os.O_RDONLY)
        rd = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)
        out.append([_try(lambda: fcntl.flock(fd, fcntl.LOCK_EX)), _try(lambda: fcntl.flock(fd, fcntl.LOCK_SH)),
                    _try(lambda: fcntl.lockf(fd, fcntl.LOCK_SH)), _try(lambda: fcntl.fcntl(fd, fcntl.F_SETLK, rd)),
                    _try(lambda: fcntl.fcntl(fd, 37, rd)), _try(lambda: fcntl.fcntl(fd, 38, rd)),  # F_OFD_SETLK(W)
                    _try(lambda: fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)),  # F_SETLEASE
                    _try(lambda: fcntl.fcntl(fd, fcntl.F_GETLK, rd)), _try(lambda: fcntl.fcntl(fd, fcntl.F_GETFD))])
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # hold whatever was taken
        pass
    return out
"""
    stop, blocked = threading.Event(), []

    def host_locker() -> None:
        fds = [os.open(f, os.O_RDONLY) for f in files]
        try:
            while not stop.is_set():
                for path, fd in zip(files, fds, strict=True):
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    except BlockingIOError:
                        blocked.append(path)
                stop.wait(0.005)  # the polling pace, not a wait for an outcome
        finally:
            for fd in fds:
                os.close(fd)

    poller = threading.Thread(target=host_locker)
    poller.start()
    try:
        got = observe(code, Limits(wall_s=5, cpu_s=3))
    finally:
        stop.set()
        poller.join()
    refused = ["EPERM"] * 7 + ["ok", "ok"]  # every lock and lease refused; asking about locks is fine
    assert got == [refused, refused]
    assert blocked == []


def test_without_a_cgroup_the_run_goes_on_with_the_per_process_bound(monkeypatch) -> None:
    def no_cgroups() -> dict[str, str]:
        raise OSError("no /proc/self/cgroup")

    monkeypatch.setattr(_cgroup, "_own_cgroups", no_cgroups)
    r = run_cases("def f():\n    return 1\n", "f", [([], 1)])
    assert (r.status, r.passed) == ("ok", [True])
    assert "memcg" not in r.layers and "seccomp" in r.layers
