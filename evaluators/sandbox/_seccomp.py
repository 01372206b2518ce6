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
* System V IPC (``shmget``, ``shmat``, ``semget``, ``msgget`` ...): a detached shared memory segment counts against
  no resource limit, so without a memory cgroup it would hold memory past ``processes * memory_mb``; no
  candidate needs it (POSIX ``/dev/shm`` is not even shown);
* file locks: ``flock`` and ``fcntl``'s record locks (``F_SETLK``, ``F_SETLKW``, ``F_OFD_SETLK``, ``F_OFD_SETLKW``)
  and leases. A filter cannot see which file a descriptor names, and a lock, even a shared one on a read-only
  handle, on a host file the sandbox shows (the interpreter, ``ld.so.cache``) would block the host's lockers for
  the run's wall time; the code may still ask (``F_GETLK``);
* any system call this libseccomp does not know (newer than it, so never needed by the interpreter).

``clone3`` answers ``ENOSYS`` (its flags sit in memory a filter cannot read), so the C library falls back to
``clone``, whose flags the filter checks. A system call of another ABI (32-bit ``int 0x80``, x32) kills the
process.

Why the filter is an allow-list of system calls: libseccomp cannot say "``ioctl`` unless the request is one of
these" under a default of allow (a rule may not carry the default action, and a rule compares each argument once),
so the default is ``EPERM`` and every system call libseccomp knows, less the ones above, is allowed, ``ioctl``
and ``fcntl`` only with an allowed request.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os

__all__ = ["DENIED", "FCNTLS", "IOCTLS", "NAMESPACE_FLAGS", "bpf"]

#: ioctl requests the code may make (the same numbers on x86-64 and arm64): TCGETS (isatty), TIOCGWINSZ
#: (terminal size), FIONREAD, FIONBIO, FIONCLEX and FIOCLEX (CPython sets close-on-exec with them).
IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)

#: fcntl commands the code may use (asm-generic numbers, x86-64 and arm64 alike): F_DUPFD, F_GETFD, F_SETFD,
#: F_GETFL, F_SETFL, F_GETLK, F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX, F_GETOWNER_UIDS,
#: F_OFD_GETLK, F_GETLEASE, F_NOTIFY, F_DUPFD_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS and the
#: read/write hints. Left out: the locks F_SETLK (6), F_SETLKW (7), F_OFD_SETLK (37), F_OFD_SETLKW (38), and
#: F_SETLEASE (1024).
FCNTLS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 15, 16, 17, 36, 1025, 1026, 1030, 1031, 1032, 1033, 1034, 1035, 1036,
          1037, 1038)  # fmt: skip

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
        # System V IPC (memory outside every rlimit) and file locks (they would reach the host's files)
        "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semtimedop_time64", "semctl",
        "msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "flock",
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
    special = {"ioctl", "clone", "clone3", "fcntl", "fcntl64"}
    for nr in range(1024):
        try:
            name = sc.resolve_syscall(arch, nr).decode()
        except ValueError:
            continue
        if name not in DENIED and name not in special:
            f.add_rule(sc.ALLOW, nr)
    for request in IOCTLS:
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.EQ, request))
    for name in ("fcntl", "fcntl64"):  # fcntl64: 32-bit ABIs only
        if sc.resolve_syscall(arch, name) >= 0:
            for command in FCNTLS:
                f.add_rule(sc.ALLOW, name, sc.Arg(1, sc.EQ, command))
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
