"""A cgroup of its own for each sandbox run, where the host lets this process make one: the run's memory in total.

Resource limits bound each process (address space), not the run, and not memory outside every process (pages of
the working tmpfs, System V shared memory, which the seccomp filter refuses anyway). A child of this process's own
memory cgroup, with ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1) at ``memory_mb``, no swap, and a pids
bound, holds everything the run's processes charge, whichever process does. It is made before the sandbox starts,
the sandbox is started inside it (a shell writes its own pid into ``cgroup.procs``, then execs bubblewrap, so
nothing of the run ever runs outside), and it is emptied and removed afterwards.

Where no memory controller is writable (no cgroup file system, not root and nothing delegated, a v2 parent with
processes of its own) ``create`` answers None and the run goes on with the per-process bound, which the layers
then name (no ``memcg``).

Written by hand: no maintained Python library makes a delegated child cgroup on both v1 and v2 (``cgroupspy`` is
v1 only and unmaintained; ``systemd-run --scope`` needs a systemd manager this process may not have).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass

__all__ = ["RunCgroup", "create"]

#: How long ``remove`` waits for the killed processes to leave the cgroup before it gives up (and says so).
_REMOVE_WAIT_S = 2.0


@dataclass(frozen=True)
class RunCgroup:
    version: int  # 1 or 2
    dirs: tuple[str, ...]  # the run's cgroup folders: the memory one first (v1: then the pids one, if any)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started from inside the cgroup: a shell joins it, then execs ``argv`` (same pid)."""
        sh = shutil.which("sh") or "/bin/sh"
        joins = "".join(f'echo $$ >"${i + 1}/cgroup.procs" || exit 125\n' for i in range(len(self.dirs)))
        return [sh, "-c", f'{joins}shift {len(self.dirs)}\nexec "$@"', "sh", *self.dirs, *argv]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for going past the memory bound."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.dirs[0], name)) as f:
                counts = dict(line.split() for line in f if len(line.split()) == 2)
            return int(counts.get("oom_kill", "0")) > 0
        except (OSError, ValueError):
            return False

    def remove(self) -> str:
        """Kill whatever is left in the cgroup and remove it; never raises. Returns why it could not, or ""."""
        problem = ""
        for d in reversed(self.dirs):
            deadline = time.monotonic() + _REMOVE_WAIT_S
            while True:
                _kill_all(d)
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        problem = problem or f"could not remove the run's cgroup {d}: {e.strerror}"
                        break
                time.sleep(0.01)  # killed processes leave the cgroup a moment after SIGKILL
        return problem


def create(memory_mb: int, processes: int) -> RunCgroup | None:
    """A fresh cgroup bounding a run to ``memory_mb`` in total (no swap) and ``processes`` + 2 tasks (bubblewrap
    and the sandbox's init besides the runner's); None where this host offers none. Never raises."""
    try:
        own = _own_cgroups()
        mounts = _mounts()
    except (OSError, ValueError):
        return None
    memory, pids = memory_mb << 20, processes + 2
    v2 = _v2_parent(own, mounts)
    if v2 is not None:
        made = _make(v2, {"memory.max": memory, "memory.swap.max": 0, "pids.max": pids}, ("memory.max",))
        return RunCgroup(2, (made,)) if made else None
    parent = _v1_parent("memory", own, mounts)
    if parent is None:
        return None
    settings = {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory, "memory.swappiness": 0}
    made = _make(parent, settings, ("memory.limit_in_bytes",))
    if not made:
        return None
    dirs = [made]
    pids_parent = _v1_parent("pids", own, mounts)
    if pids_parent is not None and (pids_dir := _make(pids_parent, {"pids.max": pids}, ("pids.max",))):
        dirs.append(pids_dir)
    return RunCgroup(1, tuple(dirs))


# ---- finding this process's cgroups ----
def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(fstype, mount point, root within the hierarchy, super options)`` of each cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                out.append((rest[0], _unescape(fields[4]), _unescape(fields[3]), set(rest[2].split(","))))
    return out


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def _folder(mount_point: str, root: str, path: str) -> str | None:
    if root != "/":
        if not (path == root or path.startswith(root.rstrip("/") + "/")):
            return None
        path = path[len(root) :] or "/"
    folder = os.path.join(mount_point, path.lstrip("/"))
    return folder if os.path.isdir(folder) else None


def _v2_parent(own: dict[str, str], mounts: list[tuple[str, str, str, set[str]]]) -> str | None:
    """This process's v2 cgroup where its children can get the memory controller (enabling it if allowed)."""
    if "" not in own:
        return None
    for fstype, point, root, _ in mounts:
        if fstype != "cgroup2" or (folder := _folder(point, root, own[""])) is None:
            continue
        try:
            with open(os.path.join(folder, "cgroup.controllers")) as f:
                available = set(f.read().split())
            with open(os.path.join(folder, "cgroup.subtree_control")) as f:
                enabled = set(f.read().split())
        except OSError:
            continue
        for c in ("memory", "pids"):
            if c in available and c not in enabled:
                try:
                    with open(os.path.join(folder, "cgroup.subtree_control"), "w") as f:
                        f.write(f"+{c}")  # EBUSY where this cgroup has processes (and is not the root)
                    enabled.add(c)
                except OSError:
                    pass
        if "memory" in enabled:
            return folder
    return None


def _v1_parent(controller: str, own: dict[str, str], mounts: list[tuple[str, str, str, set[str]]]) -> str | None:
    if controller not in own:
        return None
    for fstype, point, root, options in mounts:
        if fstype == "cgroup" and controller in options:
            folder = _folder(point, root, own[controller])
            if folder is not None and os.access(folder, os.W_OK):
                return folder
    return None


def _make(parent: str, settings: dict[str, int], required: tuple[str, ...]) -> str | None:
    """A new child of ``parent`` with ``settings`` written (those in ``required`` must take); None if not."""
    folder = os.path.join(parent, f"gridrun-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(folder)
    except OSError:
        return None
    for name, value in settings.items():
        try:
            with open(os.path.join(folder, name), "w") as f:
                f.write(str(value))
        except OSError:
            if name in required:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
                return None
    return folder


def _kill_all(folder: str) -> None:
    """SIGKILL every process still in the cgroup (v2: all at once through ``cgroup.kill``)."""
    with contextlib.suppress(OSError):
        if os.path.exists(os.path.join(folder, "cgroup.kill")):
            with open(os.path.join(folder, "cgroup.kill"), "w") as f:
                f.write("1")
            return
    try:
        with open(os.path.join(folder, "cgroup.procs")) as f:
            pids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
