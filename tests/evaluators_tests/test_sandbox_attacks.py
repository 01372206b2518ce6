"""Every class of attack an outside review found escaping the old sandbox, as code that tries it.

Each test runs the attack in the sandbox and checks its exact outcome, with the audit hook off wherever the point
is that the kernel's layers hold on their own (bubblewrap's namespaces, the unprivileged user, the tmpfs, the
resource limits, the seccomp filter). Skipped only where this machine has no bubblewrap sandbox at all (then
``code_exec`` refuses to run unless told ``isolation: best_effort``).
"""

from __future__ import annotations

import ast
import errno
import os
import pty
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from evaluators.sandbox import Limits, isolation, run_cases
from evaluators.sandbox import _run as sandbox_run

pytestmark = pytest.mark.skipif(
    not {"bwrap", "userns", "unprivileged", "seccomp", "nproc"} <= set(isolation()),
    reason="no bubblewrap sandbox here (isolation_problem() says why)",
)

TIOCSTI, TCGETS, FIOCLEX = 0x5412, 0x5401, 0x5451
LOOP_CTL_GET_FREE, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x4C82, 0x80086601, 0x40086602


def observe(code: str, limits: Limits | None = None, *, hook: bool = False) -> object:
    """What ``g()`` of ``code`` returns inside the sandbox (sent back as the detail of a deliberate exit)."""
    r = run_cases(code + "\nraise SystemExit(repr(g()))\n", "g", [([], None)], limits, audit_hook=hook)
    assert r.status == "crash" and r.detail.startswith("SystemExit: "), (r.status, r.detail)
    return ast.literal_eval(r.detail.removeprefix("SystemExit: "))


def errno_of(call: str) -> str:
    """Candidate code: the name of the errno ``call`` fails with, "ok" if it succeeds."""
    return f"_try(lambda: {call})"


TRY = """
import errno, fcntl, os
def _try(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
"""


# ---- ioctls on device nodes and host files, read-only handles included ----
@pytest.mark.parametrize("hook", [False, True])
def test_ioctls_outside_a_small_allow_list_are_refused(hook: bool) -> None:
    host_file = os.path.realpath(sys.executable)  # a host file the sandbox shows (read-only)
    code = (
        TRY
        + f"""
def g():
    null, host = os.open("/dev/null", os.O_RDONLY), os.open({host_file!r}, os.O_RDONLY)
    return [
        _try(lambda: fcntl.ioctl(0, {TIOCSTI}, b"x")),  # push input into a terminal
        _try(lambda: fcntl.ioctl(null, {TIOCSTI}, b"x")),
        _try(lambda: fcntl.ioctl(null, {TIOCSTI | (1 << 32)}, b"x")),  # high bits the kernel ignores
        _try(lambda: fcntl.ioctl(null, {LOOP_CTL_GET_FREE})),  # make a loop device
        _try(lambda: fcntl.ioctl(host, {FS_IOC_SETFLAGS}, b"\\0" * 8)),  # change a host file's inode flags
        _try(lambda: fcntl.ioctl(host, {FS_IOC_GETFLAGS}, b"\\0" * 8)),
        _try(lambda: os.open("/dev/tty", os.O_RDONLY)),
        _try(lambda: os.open("/dev/loop-control", os.O_RDONLY)),
        _try(lambda: os.open("/dev/loop0", os.O_RDONLY)),
        _try(lambda: fcntl.ioctl(null, {TCGETS}, b"\\0" * 64)),  # allowed: the device answers for itself
        _try(lambda: fcntl.ioctl(null, {FIOCLEX})),  # allowed: close-on-exec
    ]
"""
    )
    assert observe(code, hook=hook) == ["EPERM"] * 6 + ["ENOENT"] * 3 + ["ENOTTY", "ok"]


def test_no_host_terminal_can_be_reached_or_fed() -> None:
    """The review's escape typed into a host terminal: here a pseudo-terminal of this test stands for it."""
    master, slave = pty.openpty()
    try:
        pts = os.ttyname(slave)
        code = (
            TRY
            + f"""
def g():
    return [
        _try(lambda: os.open({pts!r}, os.O_RDONLY)),
        _try(lambda: os.open("/dev/tty", os.O_RDONLY)),
        _try(lambda: fcntl.ioctl(0, {TIOCSTI}, b"x")),
        os.getsid(0),  # the session of the sandbox's init (bwrap --new-session): no controlling terminal
    ]
"""
        )
        assert observe(code) == ["ENOENT", "ENOENT", "EPERM", 1]
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)  # nothing was typed into it
    finally:
        os.close(master)
        os.close(slave)


# ---- reads anywhere outside the folder ----
def test_nothing_outside_the_folder_is_readable(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    store = tmp_path / "mlruns" / "0"
    store.mkdir(parents=True)
    (store / "meta.yaml").write_text("name: Default\n")
    repo = Path(__file__).resolve().parents[2]
    targets = [str(secret), str(store), str(repo), str(repo / "mlruns"), "/etc/shadow", "/etc/passwd", "/home",
               "/tmp", "/var", "/run", "/sys", "/dev/vda", "/dev/sda", "/dev/mem", "/dev/pts"]  # fmt: skip
    code = (
        TRY
        + f"""
def g():
    return [_try(lambda p=p: os.listdir(p) if os.path.isdir(p) else open(p, "rb").read()) for p in {targets!r}]
"""
    )
    assert observe(code) == ["ENOENT"] * len(targets)


def test_the_code_runs_as_an_unprivileged_user() -> None:
    """Not host root with capabilities dropped (the review's root cause): host uid 65534, or the caller's own."""
    code = """
import os
def g():
    inside = os.getresuid() + os.getresgid()
    lines = [l.split() for l in open("/proc/self/uid_map").read().splitlines()]
    outside = [int(o) + os.getuid() - int(i) for i, o, n in lines if int(i) <= os.getuid() < int(i) + int(n)]
    caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapAmb"))]
    return inside, outside, caps, os.getgroups()
"""
    # As root, 65534 is mapped to host 65534; otherwise bubblewrap maps it to this process's own uid, one user
    # namespace up (--disable-userns nests one more, which maps 65534 to 65534): never to host root either way.
    assert observe(code) == ((65534,) * 6, [65534], ["0" * 16] * 3, [])


def test_other_processes_are_invisible() -> None:
    marker = f"gridrun-marker-{os.getpid()}-{time.time_ns()}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        code = f"""
import os
def g():
    found = []
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for p in pids:
        try:
            if {marker!r}.encode() in open(f"/proc/{{p}}/cmdline", "rb").read():
                found.append(p)
        except OSError:
            pass
    return found, pids == sorted({{1, os.getpid()}}), os.path.exists(f"/proc/{host.pid}")
"""
        assert observe(code) == ([], True, False)  # only its init and itself; no host pid
    finally:
        host.kill()
        host.wait()


def test_the_filesystem_holds_only_what_the_interpreter_needs() -> None:
    plan = sandbox_run._plan()
    dests = [plan.mounts[i + 2] for i, a in enumerate(plan.mounts) if a in ("--ro-bind", "--dev-bind", "--symlink")]
    tops = {d.strip("/").split("/")[0] for d in [*dests, "/proc", "/job", "/runner/_runner.py"]}
    code = """
import os
def g():
    writable = []
    for top in sorted(os.listdir("/")):
        try:
            open(f"/{top}/.probe", "w").close()
            writable.append(top)
        except OSError:
            pass
    return sorted(os.listdir("/")), writable, sorted(os.listdir("/dev"))
"""
    assert observe(code) == (sorted(tops), ["job"], ["null", "urandom", "zero"])


# ---- processes and memory ----
def test_processes_are_bounded_and_so_is_memory_in_total() -> None:
    """RLIMIT_NPROC binds (an unprivileged user in its own user namespace), so ``processes`` processes of at most
    ``memory_mb`` each: children held alive count until the limit refuses the next fork, and none of them can
    allocate past its own address space."""
    code = """
import errno, os
def g():
    r, w = os.pipe()
    kids, refused = [], None
    while len(kids) < 64:
        try:
            pid = os.fork()
        except OSError as e:
            refused = errno.errorcode[e.errno]
            break
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # held until the parent has tried every fork
            try:
                bytearray(200 << 20)
                os._exit(1)
            except MemoryError:
                os._exit(0)
        kids.append(pid)
    os.close(w)
    return len(kids), refused, [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
"""
    assert observe(code, Limits(processes=4, memory_mb=128)) == (3, "EAGAIN", [0, 0, 0])


def test_a_fork_bomb_ends_quickly_and_leaves_nothing() -> None:
    t0 = time.monotonic()
    r = run_cases("import os\ndef f(x):\n    while True:\n        os.fork()\n", "f", [([1], 1)], audit_hook=False)
    assert (r.status, r.passed) == ("ok", [False])
    assert time.monotonic() - t0 < 3


# ---- disk ----
def test_the_folder_is_a_small_tmpfs_and_nothing_lands_on_the_host() -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    code = (
        TRY
        + """
def g():
    n = 0
    while True:
        try:
            with open(f"f{n}", "w") as fh:
                fh.write("x")
        except OSError as e:
            full = errno.errorcode[e.errno]
            break
        n += 1
    for name in os.listdir("."):
        os.remove(name)

    def reserve(name, size):
        fd = os.open(name, os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)

    return [n, full, _try(lambda: reserve("big", 8 << 20)), _try(lambda: reserve("a", 600 << 10)),
            _try(lambda: reserve("b", 600 << 10))]
"""
    )
    page = os.sysconf("SC_PAGE_SIZE")
    # many small files fill the 1 MiB folder a page each; fallocate past file_mb, or past what is left, fails
    assert observe(code, Limits(file_mb=1)) == [(1 << 20) // page, "ENOSPC", "EFBIG", "ok", "ENOSPC"]
    # the sandbox's own folders only: the suite's other worker writes trials' checkpoint folders there meanwhile
    assert {x for x in set(os.listdir(tempfile.gettempdir())) - before if x.startswith("gridrun-sandbox-")} == set()


# ---- raw system calls ----
NAMES = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv", "bpf",
         "perf_event_open", "userfaultfd", "io_uring_setup", "keyctl", "init_module", "kexec_load", "open_by_handle_at",
         "mknodat", "socket")  # fmt: skip


def test_raw_system_calls_through_ctypes_are_refused_by_the_kernel() -> None:
    """The runner never imports ctypes; code that loads its own (audit hook off) still meets the seccomp filter."""
    import pyseccomp

    arch = pyseccomp.system_arch()
    nrs = {name: pyseccomp.resolve_syscall(arch, name) for name in (*NAMES, "clone", "clone3")}
    code = f"""
import sys
before = sorted(m for m in sys.modules if "ctypes" in m)
import ctypes, errno
def g():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nrs, out = {nrs!r}, []
    for name in {NAMES!r}:
        ctypes.set_errno(0)
        out.append((libc.syscall(nrs[name], 0x10000000, 0, 0, 0, 0), ctypes.get_errno()))
    # a process in a new user namespace, where it would hold every capability
    out.append((libc.syscall(nrs["clone"], 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno()))
    out.append((libc.syscall(nrs["clone3"], 0, 0), ctypes.get_errno()))
    return before, out
"""
    before, got = observe(code)
    assert before == []  # nothing of the runner's: it never loaded ctypes
    assert dict(zip((*NAMES, "clone", "clone3"), got, strict=True)) == {
        n: (-1, errno.EPERM) for n in (*NAMES, "clone")
    } | {"clone3": (-1, errno.ENOSYS)}


def test_with_the_audit_hook_ctypes_cannot_even_be_imported() -> None:
    r = run_cases("import ctypes\ndef f():\n    return 1\n", "f", [([], 1)])
    assert (r.status, r.detail) == ("crash", "PermissionError: sandbox: import of ctypes is not allowed")
