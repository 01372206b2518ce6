"""What bubblewrap is given: the host's plan (binaries, interpreter, read-only mounts, seccomp), the read-only view
of the interpreter, system libraries and devices, and (as root) the user namespace that maps the sandbox's user to
65534 instead of host root. ``_run`` builds the command line from these."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["SANDBOX_ID", "Plan", "mounts", "userns_fd"]

#: The unprivileged user and group the code runs as, inside the sandbox and on the host ("nobody").
SANDBOX_ID = 65534
#: System library folders shown read-only where they exist (symlinks among them are recreated as symlinks).
_LIB_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/usr/local/lib", "/lib", "/lib64", "/lib32")
#: The device nodes the code gets; nothing else of the host's /dev.
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")


@dataclass(frozen=True)
class Plan:
    """How this host runs the sandbox: found once (``_run._plan``)."""

    bwrap: str | None  # the bwrap binary; None where it is not installed
    unshare: str | None  # util-linux unshare (used as root)
    exe: str  # the interpreter, a real path (the same inside the sandbox)
    mounts: tuple[str, ...]  # bwrap options showing the interpreter, libraries and devices
    seccomp: bool  # whether the seccomp filter could be built
    problem: str  # why bubblewrap or seccomp is missing, or ""


def userns_fd(plan: Plan) -> int:
    """(As root) a new user namespace mapping uid 0 to 0 and 65534 to 65534, gid 65534 to 65534 only."""
    assert plan.unshare is not None
    helper = subprocess.Popen(
        [plan.unshare, "--user", "--", "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert helper.stdin is not None and helper.stdout is not None and helper.stderr is not None
    try:
        helper.stdin.write(b"\n")  # echoed once cat runs, that is once the namespace exists
        helper.stdin.flush()
        if helper.stdout.read(1) != b"\n":
            why = helper.stderr.read(300).decode(errors="replace").strip() or "it exited"
            raise OSError(f"unshare --user failed: {why}")
        for name, text in (
            ("uid_map", f"0 0 1\n{SANDBOX_ID} {SANDBOX_ID} 1\n"),
            ("setgroups", "deny"),
            ("gid_map", f"{SANDBOX_ID} {SANDBOX_ID} 1\n"),
        ):
            with open(f"/proc/{helper.pid}/{name}", "w") as f:
                f.write(text)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.kill()
        helper.wait()
        for stream in (helper.stdin, helper.stdout, helper.stderr):
            with contextlib.suppress(OSError):
                stream.close()


def mounts(exe: str) -> list[str]:
    """bwrap options for a read-only view of the interpreter (its prefix), the system libraries and ld.so's
    cache, plus /proc and the three devices. Parent folders are made 0755 (bwrap would copy the host's modes,
    and the unprivileged user could not pass e.g. a 0700 /root)."""
    roots: list[str] = []

    def add(path: str) -> None:
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            roots[:] = [r for r in roots if not r.startswith(path.rstrip("/") + "/")] + [path]

    add(os.path.realpath(sys.base_prefix))
    add(os.path.dirname(exe))
    links: list[tuple[str, str]] = []
    for d in _LIB_DIRS:
        if os.path.islink(d):
            links.append((os.readlink(d), d))
        elif os.path.isdir(d):
            add(os.path.realpath(d))
    files = [f for f in ("/etc/ld.so.cache",) if os.path.isfile(f)]
    dests = sorted(roots) + files + [d for _, d in links] + list(_DEVICES) + ["/proc"]
    parents = sorted({p for d in dests for p in _parents(d)}, key=lambda p: (p.count("/"), p))
    args: list[str] = []
    for p in parents:
        args += ["--perms", "0755", "--dir", p]
    for r in sorted(roots):
        args += ["--ro-bind", r, r]
    for f in files:
        args += ["--ro-bind", f, f]
    for target, d in links:
        args += ["--symlink", target, d]
    for dev in _DEVICES:
        if os.path.exists(dev):
            args += ["--dev-bind", dev, dev]
    args += ["--proc", "/proc"]
    return args


def _parents(path: str) -> list[str]:
    """``/a/b/c`` → ``["/a", "/a/b"]``."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
