"""The sandbox's runner: resource limits, an audit hook, then the code against its test cases. Stdlib only.

Started by :func:`evaluators.sandbox.run_cases` as ``python -I -S _runner.py JOB_FD OUT_FD [--drop ID]``, a fresh
interpreter that bubblewrap execs once the sandbox is built (user, PID, network and mount namespaces, seccomp, no
capabilities: see ``_run``). It reads the job (code, function name, cases, limits) from ``JOB_FD`` and writes
``OUT_FD``: a ``{"layers": [...]}`` line naming the isolation it observes, one ``{"ok": bool}`` line per case, and
a ``{"status": ...}`` line when the code crashes or runs out of time. Everything else it inherited is closed
first. It never imports ctypes, so none is left for the code to reach.

``--drop ID`` (when the caller is root): the runner starts as root of a user namespace that maps only that root
and ``ID``, holding just CAP_SETUID and CAP_SETGID; it becomes ``ID`` (losing both) and re-execs itself, so the
code starts in a fresh interpreter of an unprivileged user.

Then, before any of the code runs:

1. resource limits: CPU seconds, address space, file size (SIGXFSZ ignored, so a write past it fails with
   EFBIG), open files, no core files, and processes (``RLIMIT_NPROC``: the sandbox's processes and threads at
   once, this one included). For an unprivileged user in its own user namespace the kernel counts only the
   sandbox's tasks, so memory is bounded in total by ``processes * memory_mb`` (by ``memory_mb`` where the
   caller put the run in a memory cgroup);
2. the wall clock (SIGALRM: a "timeout" line, then exit; the caller kills the sandbox shortly after anyway);
3. an audit hook, armed for good, refusing process creation, sockets, ctypes, writes outside the working folder
   and the introspection that could reach the hook (gc's object lists, trace and profile functions). It is a
   tripwire on top of the kernel's layers, not one they rely on: it leaves frames (``sys._getframe``, which
   ``collections.namedtuple`` uses), recursion limits and every pure-stdlib import alone.

The code runs as a real module, ``candidate``, registered in ``sys.modules`` (dataclasses under string
annotations, ``typing.get_type_hints`` and pickle look their classes up there); ``if __name__ == "__main__"``
blocks stay out. A result is compared as JSON holds it (the cases come as JSON): a tuple equals the stored list.

The code can write to its folder and to ``OUT_FD``: the layers protect the machine, not the score against code
written on purpose to fake its own results.
"""

import contextlib
import json
import os
import resource
import signal
import sys
import types


def close_other_fds(keep):
    """Close every descriptor but ``keep`` (bubblewrap passes on what it was given, a user namespace's among them)."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor is closed already
                os.close(int(name))


def drop_to(uid, argv):
    """As the user namespace's root: become ``uid`` (group too), then re-exec this runner without ``--drop``."""
    if os.getgroups():  # the caller starts bubblewrap with none, and the namespace refuses setgroups
        sys.exit("runner: supplementary groups left before dropping privileges")
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        sys.exit("runner: could not drop privileges")
    i = argv.index("--drop")
    rest = argv[:i] + argv[i + 2 :]
    os.execv(sys.executable, [sys.executable, "-I", "-S", sys.argv[0], *rest])


def read_all(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def tasks_of_others(uid):
    """Tasks (threads) of other processes of ``uid`` visible here: in the sandbox, its init where it runs as the
    same user. ``RLIMIT_NPROC`` counts them too."""
    me, n = str(os.getpid()), 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields["Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return n


def set_limits(lim):
    """Apply the limits; True if the process limit is one the kernel enforces (not for host root)."""
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] << 20, lim["memory_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] << 20, lim["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = tasks_of_others(os.getuid()) + int(lim.get("processes", 4))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    except (ValueError, OSError):
        return False
    return True


def observed_layers(nproc):
    """The isolation this process can see for itself (the caller adds what bubblewrap set up)."""
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        with open("/proc/self/uid_map") as f:
            uid_map = [line.split() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []
    layers = []
    if uid_map != [["0", "0", "4294967295"]]:
        layers.append("userns")
    uid = os.getuid()
    outside = [int(o) + uid - int(i) for i, o, n in uid_map if int(i) <= uid < int(i) + int(n)]
    if uid != 0 and outside and outside[0] != 0:
        layers.append("unprivileged")
    if int(status.get("CapEff", "1").strip(), 16) == 0 and int(status.get("CapPrm", "1").strip(), 16) == 0:
        layers.append("nocaps")
    if status.get("Seccomp", "").strip() == "2":
        layers.append("seccomp")
    if nproc and "unprivileged" in layers:
        layers.append("nproc")
    return layers


BLOCKED = frozenset(
    {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
        "sys._current_frames", "sys.addaudithook",
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


def arm_audit_hook(home):
    """Install the hook for good. Everything it reads is bound here, as defaults: the code can rebind module
    attributes, builtins and this module's globals (``sys.modules["__main__"]``), but not these."""
    folder = home.rstrip(os.sep) + os.sep

    def hook(
        event,
        args,
        home=folder,
        blocked=BLOCKED,
        forbidden=FORBIDDEN_MODULES,
        path_events=PATH_EVENTS,
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
                p = realpath(fspath(p))
                return ((p.decode() if isinstance(p, bytes) else p) + "/").startswith(home)
            except (TypeError, ValueError, UnicodeDecodeError):
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

    sys.addaudithook(hook)


def as_json(value, dumps=json.dumps, loads=json.loads):
    """``value`` as the case stores it (the cases come as JSON): tuples become lists, keys strings, and int or str
    subclasses plain ones. A value JSON cannot hold (a set, an object) is compared as it is."""
    try:
        return loads(dumps(value))
    except (TypeError, ValueError, RecursionError, OverflowError):
        return value


def main():
    argv = sys.argv[1:]
    job_fd, out_fd = int(argv[0]), int(argv[1])
    close_other_fds({0, 1, 2, job_fd, out_fd})
    if "--drop" in argv:
        drop_to(int(argv[argv.index("--drop") + 1]), argv)  # re-execs: never returns
    cfg = json.loads(read_all(job_fd))
    os.close(job_fd)
    getpid, dumps, write_fd, exit_ = os.getpid, json.dumps, os.write, os._exit
    me = getpid()

    def write(rec):
        try:
            write_fd(out_fd, (dumps(rec) + "\n").encode())
        except OSError:  # the code filled or broke the results file: nothing more to say
            exit_(0)

    lim = cfg["limits"]
    layers = observed_layers(set_limits(lim))
    write({"layers": layers})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def on_alarm(signum, frame):
        if getpid() == me:
            write({"status": "timeout", "detail": "wall clock"})
        exit_(0)

    signal.signal(signal.SIGALRM, on_alarm)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    cases, name = cfg["cases"], cfg["function"]
    try:  # the caller compiled it already; a crash here still says why
        code = compile(cfg["code"], "candidate.py", "exec")
    except BaseException as e:
        write({"status": "crash", "detail": type(e).__name__ + ": " + str(e)[:500]})
        exit_(0)
    # a real module, registered: dataclasses (string annotations), pickle and typing look classes up by module
    module = types.ModuleType("candidate")
    module.__file__ = os.path.join(os.getcwd(), "candidate.py")
    sys.modules["candidate"] = module
    ns = module.__dict__
    if cfg.get("audit_hook", True):
        arm_audit_hook(os.getcwd())
    signal.setitimer(signal.ITIMER_REAL, float(lim["wall_s"]))
    try:
        exec(code, ns)
    except BaseException as e:
        if getpid() == me:
            write({"status": "crash", "detail": type(e).__name__ + ": " + str(e)[:500]})
        exit_(0)
    fn = ns.get(name)
    if not callable(fn):
        if getpid() == me:
            write({"status": "no_function"})
        exit_(0)
    for args, expected in cases:
        try:
            got = as_json(fn(*args))
            ok = got == expected or (
                isinstance(expected, float) and isinstance(got, int | float) and abs(got - expected) < 1e-6
            )
        except BaseException:
            ok = False
        if getpid() != me:  # a process the code forked came back here: only the runner reports
            exit_(0)
        write({"ok": bool(ok)})
    exit_(0)


if __name__ == "__main__":
    main()
