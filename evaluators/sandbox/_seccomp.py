"""The sandbox's seccomp filter, built with libseccomp (through ``pyseccomp``) and handed to bubblewrap as BPF.

What it refuses (``EPERM``), on top of what the namespaces already take away:

* ``ioctl`` except a small allow-list (terminal attributes and window size, non-blocking and close-on-exec
  flags, bytes readable): no input pushed into a terminal (``TIOCSTI``), no loop devices, no inode flags or any
  other driver or file-system ``ioctl`` on whatever the code can open, read-only handles included;
* namespaces and mounts (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag, ``mount`` and the new
  mount API, ``pivot_root``, ``chroot``), so the code cannot build itself a user namespace with capabilities;
* other processes and the kernel's own machinery: ``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``kcmp``,
  ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring`` (which would redo other calls off the filter),
  keyrings, modules, ``kexec``, ``reboot``, swap, clocks, accounting, file handles, ``mknod``, sockets;
* any system call this libseccomp does not know (newer than it, so never needed by the interpreter).

``clone3`` answers ``ENOSYS`` (its flags sit in memory a filter cannot read), so the C library falls back to
``clone``, whose flags the filter checks. A system call of another ABI (32-bit ``int 0x80``, x32) kills the
process.

Why the filter is an allow-list of system calls: libseccomp cannot say "``ioctl`` unless the request is one of
these" under a default of allow (a rule may not carry the default action, and a rule compares each argument once),
so the default is ``EPERM`` and every system call libseccomp knows, less the ones above, is allowed, ``ioctl``
only with an allowed request.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os

__all__ = ["DENIED", "IOCTLS", "NAMESPACE_FLAGS", "bpf"]

#: ioctl requests the code may make (the same numbers on x86-64 and arm64): TCGETS (isatty), TIOCGWINSZ
#: (terminal size), FIONREAD, FIONBIO, FIONCLEX and FIOCLEX (CPython sets close-on-exec with them).
IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)

#: CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

DENIED = frozenset(
    {
        # namespaces and mounts
        "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
        "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
        # other processes, tracing, BPF, io_uring
        "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
        "perf_event_open", "bpf", "userfaultfd", "lookup_dcookie", "fanotify_init",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        # keyrings, modules, kexec, reboot, swap, clocks, accounting, kernel log, I/O ports
        "add_key", "request_key", "keyctl", "init_module", "finit_module", "delete_module", "kexec_load",
        "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "iopl", "ioperm", "uselib",
        "nfsservctl", "personality", "sysfs", "_sysctl", "ustat", "sethostname", "setdomainname",
        # file handles (open by inode, past path checks), device nodes, sockets
        "open_by_handle_at", "name_to_handle_at", "mknod", "mknodat", "socket",
    }
)  # fmt: skip


@functools.cache
def bpf() -> bytes:
    """The filter as a BPF program (what ``bwrap --seccomp FD`` reads). Raises ImportError or OSError where
    pyseccomp or libseccomp is missing."""
    import tempfile

    import pyseccomp as sc

    arch = sc.system_arch()
    f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
    with contextlib.suppress(OSError):  # a binary tree over the system call numbers (libseccomp >= 2.5)
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    special = {"ioctl", "clone", "clone3"}
    for nr in range(1024):
        try:
            name = sc.resolve_syscall(arch, nr).decode()
        except ValueError:
            continue
        if name not in DENIED and name not in special:
            f.add_rule(sc.ALLOW, nr)
    for request in IOCTLS:
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.EQ, request))
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, NAMESPACE_FLAGS, 0))
    if sc.resolve_syscall(arch, "clone3") >= 0:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def memfd() -> int:
    """A fresh file descriptor holding the BPF program, positioned at its start (for ``--seccomp``)."""
    fd = os.memfd_create("gridrun-seccomp", os.MFD_CLOEXEC)
    os.write(fd, bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
