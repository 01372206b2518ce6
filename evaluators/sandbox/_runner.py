"""The sandbox process: isolate, then run generated code against its test cases. Standard library only.

Started by :func:`evaluators.sandbox.run_cases` as ``python -I -S _runner.py`` in a fresh temporary
working folder holding ``job.json`` (code, function name, cases, limits). It writes ``results.jsonl`` there: a
``{"layers": [...]}`` line naming the isolation in force, one ``{"ok": bool}`` line per case, and a
``{"status": ...}`` line when the code crashes, runs out of time or is killed.

Three processes, so that the one holding the clock never runs untrusted code:

    runner   unshares the network and PID namespaces, starts ``init``, kills it at the wall-clock limit
    init     PID 1 of the new PID namespace: starts ``worker`` and waits; when it dies, the kernel kills every
             process left in the namespace, including any the code detached with setsid
    worker   applies Landlock, resource limits and the audit hook, then runs the code

Layers, each used where the kernel offers it; the later ones still apply where an earlier one is missing (the
``code_exec`` evaluator refuses to run without Landlock and seccomp unless told ``isolation: best_effort``):

1. namespaces: a new network namespace has no interface up (no network at all, UDP and raw sockets
   included); a user namespace makes both namespaces available without root.
2. Landlock: no file writes, removals, renames or links outside the working folder, no TCP bind or connect,
   no signals to processes outside the worker.
3. as root, no capabilities at all (no chown, file capabilities, immutable flags or permission overrides);
   then a seccomp filter refusing what Landlock does not cover: chmod, chown, xattrs and file times anywhere,
   every socket (so no Unix socket of the host either), mounts, namespaces, ptrace, keyrings, BPF, io_uring.
4. resource limits: CPU seconds, address space, file size, open files, processes (the kernel does not apply
   the last to root, which is why the PID namespace comes first).
5. an audit hook, armed for good before the code runs, refusing process creation, sockets, ctypes, writes
   outside the folder, and the introspection (frames, gc, rewriting code objects) that could reach the hook.

What the layers protect is the machine: the code cannot write outside its folder, reach the network, outlive
its time or take the host's memory. They do not make the score tamper-proof against code written on purpose to
fake its own results (it can write to its folder); SFT on reference solutions does not teach a model that.
"""

import contextlib
import json
import os
import resource
import signal
import sys

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
# The Landlock system calls have one number on every architecture (they are newer than the unified table).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS = 38

FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
# make char device, dir, regular file, socket, fifo, block device, symlink
FS_MAKE = (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def unshare_namespaces():
    """New network and PID namespaces (inside a user namespace when not root); [] where the kernel refuses."""
    import ctypes

    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | CLONE_NEWPID | (0 if uid == 0 else CLONE_NEWUSER)
    try:
        if _libc().unshare(ctypes.c_int(flags)) != 0:
            return []
        if uid != 0:  # keep our own uid and gid inside, so file access is exactly as before
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    except OSError:
        return []
    return ["netns", "pidns"]


def landlock(home):
    """Restrict this process (and what it starts) to writing beneath ``home``, no TCP, no signals out.

    Returns the Landlock ABI version applied, 0 where Landlock is not available.
    """
    import ctypes

    c_long, c_u64 = ctypes.c_long, ctypes.c_uint64
    libc = _libc()
    abi = libc.syscall(c_long(SYS_CREATE_RULESET), None, c_long(0), c_long(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return 0
    fs = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE
    fs |= FS_REFER if abi >= 2 else 0
    fs |= FS_TRUNCATE if abi >= 3 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", c_u64), ("handled_access_net", c_u64), ("scoped", c_u64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", c_u64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct as this kernel knows it
    ruleset = libc.syscall(c_long(SYS_CREATE_RULESET), ctypes.byref(attr), c_long(size), c_long(0))
    if ruleset < 0:
        return 0
    folder = os.open(home, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = PathBeneath(fs, folder)
        if libc.syscall(c_long(SYS_ADD_RULE), c_long(ruleset), c_long(1), ctypes.byref(rule), c_long(0)) != 0:
            return 0
        if not _no_new_privs(libc):
            return 0
        if libc.syscall(c_long(SYS_RESTRICT_SELF), c_long(ruleset), c_long(0)) != 0:
            return 0
    finally:
        os.close(folder)
        os.close(ruleset)
    return int(abi)


def drop_capabilities():
    """As root: give up every capability (bounding, ambient, effective, permitted, inheritable).

    Root without capabilities cannot chown, set file capabilities or immutable flags, or override permissions;
    it still owns root's files, so chmod and the like are left to the seccomp filter. Returns True if dropped.
    """
    import ctypes

    if os.geteuid() != 0:
        return False
    libc = _libc()
    c_long = ctypes.c_long
    for cap in range(64):  # PR_CAPBSET_DROP; EINVAL past the last capability this kernel knows
        libc.prctl(ctypes.c_int(24), c_long(cap), c_long(0), c_long(0), c_long(0))
    libc.prctl(ctypes.c_int(47), c_long(4), c_long(0), c_long(0), c_long(0))  # PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    return libc.capset(ctypes.byref(header), data) == 0


# x86-64 system calls the code has no business making (EPERM). Metadata of files anywhere (Landlock covers writes,
# not chmod/chown/xattr/times), every socket (no network, no Unix socket of the host: Ray, Docker), mounts and
# namespaces, other processes' memory, kernel keyrings, BPF, io_uring (which could redo all of the above).
_DENY_X86_64 = (
    90, 91, 92, 93, 94, 260, 268, 452,  # chmod fchmod chown fchown lchown fchownat fchmodat fchmodat2
    188, 189, 190, 197, 198, 199, 463, 466,  # set/lset/fset/remove/lremove/fremove xattr, setxattrat, removexattrat
    132, 235, 261, 280,  # utime utimes futimesat utimensat
    41, 133, 259,  # socket mknod mknodat
    101, 310, 311,  # ptrace process_vm_readv process_vm_writev
    165, 166, 155, 161, 272, 308, 428, 429, 430, 431, 432, 433, 442,  # mounts, chroot, unshare, setns, new mount API
    248, 249, 250, 321, 298, 323, 425,  # add_key request_key keyctl bpf perf_event_open userfaultfd io_uring_setup
    303, 304, 246, 320, 175, 313, 176, 167, 168, 169, 170, 171, 164, 227, 163, 179,  # handles, kexec, modules, ...
)  # fmt: skip


def seccomp_filter():
    """Install a seccomp filter refusing the calls above (x86-64 only). Returns True if installed."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        return False

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | 1
    deny_at = 6 + len(_DENY_X86_64)  # index of the final "return EPERM"
    prog = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, 0xC000003E),  # AUDIT_ARCH_X86_64, else kill: no other ABI's numbers apply
        (ret, 0, 0, kill),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, deny_at - 5, 0, 0x40000000),  # the x32 ABI
    ]
    for nr in _DENY_X86_64:
        prog.append((jeq, deny_at - (len(prog) + 1), 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    assert len(prog) == deny_at + 1
    filters = (SockFilter * len(prog))(*[SockFilter(*f) for f in prog])
    fprog = SockFprog(len(prog), filters)
    libc = _libc()
    if not _no_new_privs(libc):
        return False
    c_long = ctypes.c_long
    return libc.prctl(ctypes.c_int(22), c_long(2), ctypes.byref(fprog), c_long(0), c_long(0)) == 0  # FILTER


def set_limits(lim):
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] << 20, lim["memory_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] << 20, lim["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    with contextlib.suppress(ValueError, OSError):  # not enforced for root: the PID namespace is what holds
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


BLOCKED = frozenset(
    {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto", "socket.__new__",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "os.putenv", "os.unsetenv",
        "sys.setrecursionlimit", "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook",
    }
)  # fmt: skip
FORBIDDEN_MODULES = frozenset(
    {"ctypes", "_ctypes", "socket", "_socket", "subprocess", "_posixsubprocess", "multiprocessing"}
)
PATH_EVENTS = frozenset(
    {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
        "os.truncate", "shutil.rmtree", "os.utime",
    }
)  # fmt: skip
HIDDEN_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_globals", "f_locals"})
FROZEN_ATTRS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"})


def arm_audit_hook(home):
    """Install the hook for good. Everything it reads is bound here, as defaults: the code can rebind module
    attributes, builtins and this module's globals (``sys.modules["__main__"]``), but not these."""

    def hook(
        event,
        args,
        home=home + os.sep,
        blocked=BLOCKED,
        forbidden=FORBIDDEN_MODULES,
        path_events=PATH_EVENTS,
        hidden=HIDDEN_ATTRS,
        frozen=FROZEN_ATTRS,
        realpath=os.path.realpath,
        fspath=os.fspath,
        pathlike=(str, bytes, os.PathLike),  # builtins below too: a rebound builtin must not fool the hook
        write_flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
        isinstance=isinstance,
        len=len,
        any=any,
        str=str,
        PermissionError=PermissionError,
    ):
        def inside(p):
            try:
                return (realpath(fspath(p)) + "/").startswith(home)
            except (TypeError, ValueError):
                return False

        if event in blocked:
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open" and args and isinstance(args[0], pathlike):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(c in mode for c in "wax+") or flags & write_flags
            if writing and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working folder")
        elif event in path_events and args and not inside(args[0]):
            raise PermissionError("sandbox: " + event + " outside the working folder")
        elif event == "import" and args and str(args[0]).split(".")[0] in forbidden:
            raise PermissionError("sandbox: import of " + str(args[0]) + " is not allowed")
        elif event == "object.__getattr__" and len(args) > 1 and args[1] in hidden:
            raise PermissionError("sandbox: " + str(args[1]) + " is not allowed")
        elif event == "object.__setattr__" and len(args) > 1 and args[1] in frozen:
            raise PermissionError("sandbox: setting " + str(args[1]) + " is not allowed")

    sys.addaudithook(hook)


def worker(cfg, out, home, layers):
    """Isolate this process, then run the cases. Never returns."""
    abi = landlock(home)
    if abi:
        layers = [*layers, f"landlock{abi}"]
    if drop_capabilities():
        layers = [*layers, "nocaps"]
    if seccomp_filter():
        layers = [*layers, "seccomp"]
    out.write(json.dumps({"layers": layers}) + "\n")
    set_limits(cfg["limits"])
    for name in ("ctypes", "_ctypes", "ctypes._endian"):  # used above; the code may not reach it through sys.modules
        sys.modules.pop(name, None)
    cases = cfg["cases"]
    name = cfg["function"]
    code = compile(cfg["code"], "candidate.py", "exec")
    dumps, write, exit_ = json.dumps, out.write, os._exit
    if cfg.get("audit_hook", True):
        arm_audit_hook(home)
    ns = {"__name__": "candidate"}
    try:
        exec(code, ns)
    except BaseException as e:
        write(dumps({"status": "crash", "detail": type(e).__name__ + ": " + str(e)[:200]}) + "\n")
        exit_(0)
    fn = ns.get(name)
    if not callable(fn):
        write(dumps({"status": "no_function"}) + "\n")
        exit_(0)
    for args, expected in cases:
        try:
            got = fn(*args)
            ok = got == expected or (
                isinstance(expected, float) and isinstance(got, int | float) and abs(got - expected) < 1e-6
            )
        except BaseException:
            ok = False
        write(dumps({"ok": bool(ok)}) + "\n")
    exit_(0)


def _no_new_privs(libc):
    """Required before an unprivileged Landlock or seccomp restriction; returns True when set."""
    import ctypes

    c_long = ctypes.c_long
    return libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), c_long(1), c_long(0), c_long(0), c_long(0)) == 0


def _spawn(target, *args):
    """Fork a child that runs ``target(*args)`` and exits (70 if it returns or raises); give the parent its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        finally:
            os._exit(70)
    return pid


def _status(wait_status):
    """An exit status as the caller reads it: ``{"exit": n}`` or ``{"signal": n}``."""
    if os.WIFSIGNALED(wait_status):
        return {"signal": os.WTERMSIG(wait_status)}
    return {"exit": os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1}


def init(cfg, out, home, layers):
    """PID 1 of the sandbox's namespace (or a plain parent without one): start the worker, wait, pass on how it
    ended. Never returns."""
    _, wait_status = os.waitpid(_spawn(worker, cfg, out, home, layers), 0)
    st = _status(wait_status)
    os._exit(128 + st["signal"] if "signal" in st else st["exit"])


def main():
    with open("job.json") as f:
        cfg = json.load(f)
    home = os.path.realpath(os.getcwd())
    out = open("results.jsonl", "w", buffering=1)  # noqa: SIM115 - opened before any restriction, for good
    layers = unshare_namespaces()
    pid = _spawn(init, cfg, out, home, layers)

    timed_out = []

    def on_alarm(signum, frame):
        timed_out.append(True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # init: the kernel then kills everything in its PID namespace

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, float(cfg["limits"]["wall_s"]))
    _, wait_status = os.waitpid(pid, 0)  # retried across the alarm (PEP 475): its handler does not raise
    signal.setitimer(signal.ITIMER_REAL, 0)
    st = _status(wait_status)
    if timed_out:
        out.write(json.dumps({"status": "timeout", "detail": "wall clock"}) + "\n")
    elif st.get("exit", 0) > 128:  # init passes a signal on as 128 + its number
        out.write(json.dumps({"signal": st["exit"] - 128}) + "\n")
    elif "signal" in st or st.get("exit"):
        out.write(json.dumps({"status": "crash", "detail": f"sandbox process ended with {st}"}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
