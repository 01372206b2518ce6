"""The sandbox under attack: each attack is a failed case, never an exception, and the caller goes on.

The first group goes through every layer. The second turns the in-process audit hook off to check that the
kernel's layers (bubblewrap's namespaces and read-only view, the seccomp filter) hold on their own; it is skipped
where this machine gives no bubblewrap sandbox. The attack classes of the outside review are in
``test_sandbox_attacks.py``, the correct-code corpus in ``test_sandbox_corpus.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from evaluators.sandbox import Limits, isolation, run_cases

# ---- every layer ----
CASES = [([1], 1)]


def test_sandbox_runs_good_code() -> None:
    r = run_cases("def f(x):\n    return x\n", "f", [([1], 1), ([2], 3)])
    assert r.passed == [True, False] and r.status == "ok"


def test_sandbox_survives_an_infinite_loop() -> None:
    r = run_cases("def f(x):\n    while True:\n        pass\n", "f", CASES, Limits(wall_s=3, cpu_s=1))
    assert r.passed == [False] and r.status == "timeout"


def test_sandbox_survives_a_memory_bomb() -> None:
    r = run_cases("def f(x):\n    return len('x' * (8 * 10**9))\n", "f", CASES, Limits(memory_mb=256))
    assert r.passed == [False]


def test_sandbox_survives_a_fork_bomb() -> None:
    code = "import os\ndef f(x):\n    while True:\n        os.fork()\n"
    r = run_cases(code, "f", CASES)
    assert r.passed == [False]
    # nothing it could have started is left behind: only this test process's own children may exist
    assert r.status in ("ok", "crash")


def test_sandbox_refuses_writes_outside_its_folder(tmp_path) -> None:
    target = tmp_path / "pwned.txt"
    code = f"def f(x):\n    open({str(target)!r}, 'w').write('x')\n    return 1\n"
    assert run_cases(code, "f", CASES).passed == [False]
    assert not target.exists()
    inside = "def f(x):\n    open('scratch.txt', 'w').write('ok')\n    return 1\n"
    assert run_cases(inside, "f", CASES).passed == [True]  # its own temp folder is fine


def test_sandbox_refuses_the_network() -> None:
    for code in (
        "def f(x):\n    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return 1\n",
        "def f(x):\n    import urllib.request as u\n    u.urlopen('http://127.0.0.1:9', timeout=1)\n    return 1\n",
    ):
        assert run_cases(code, "f", CASES).passed == [False]


def test_sandbox_refuses_subprocesses_and_sees_no_secrets(monkeypatch) -> None:
    monkeypatch.setenv("GRIDRUN_SECRET_TOKEN", "s3cret")
    assert run_cases("import subprocess\ndef f(x):\n    return 1\n", "f", CASES).status == "crash"
    leak = "import os\ndef f(x):\n    return os.environ.get('GRIDRUN_SECRET_TOKEN')\n"
    assert run_cases(leak, "f", [([1], None)]).passed == [True]  # the variable is not there
    assert os.environ["GRIDRUN_SECRET_TOKEN"] == "s3cret"


@pytest.mark.parametrize(
    "attack",
    [
        "import sys\n    sys.modules['__main__'].armed = False",  # the old runner's switch
        "import sys\n    sys._getframe(1).f_globals.clear()",
        "try:\n        raise ValueError\n    except ValueError as e:\n"
        "        e.__traceback__.tb_frame.f_back.f_globals.clear()",
        "import gc\n    [o.clear() for o in gc.get_objects() if isinstance(o, dict) and 'BLOCKED' in o]",
        "import os\n    os.path.realpath = lambda p: os.getcwd() + '/inside'",
        "import builtins\n    builtins.isinstance = lambda *a: False",
        "import sys\n    m = sys.modules['__main__']\n    m.BLOCKED = frozenset(); m.PATH_EVENTS = frozenset()",
    ],
)
def test_the_hook_cannot_be_switched_off_from_inside(attack: str, tmp_path) -> None:
    target = tmp_path / "pwned.txt"
    body = attack.replace("\n", "\n    ")
    code = f"def f(x):\n    try:\n        {body}\n    except Exception:\n        pass\n"
    code += f"    open({str(target)!r}, 'w').write('x')\n    return 1\n"
    compile(code, "attack", "exec")
    r = run_cases(code, "f", CASES)
    assert r.passed == [False]
    assert not target.exists()


# ---- the kernel's layers alone (audit hook off) ----
LAYERS = isolation()
needs = {
    "bwrap": pytest.mark.skipif(
        not {"bwrap", "mountns", "seccomp"} <= set(LAYERS), reason="no bubblewrap sandbox with seccomp here"
    ),
    "namespaces": pytest.mark.skipif(
        not {"netns", "pidns"} <= set(LAYERS), reason="no network/PID namespaces for this user here"
    ),
}


@needs["bwrap"]
def test_kernel_refuses_writes_outside_the_folder(tmp_path) -> None:
    target = tmp_path / "pwned.txt"
    code = f"import os\ndef f(x):\n    fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n    return 1\n"
    r = run_cases(code, "f", CASES, audit_hook=False)
    assert r.passed == [False] and not target.exists()
    inside = "def f(x):\n    open('scratch.txt', 'w').write('ok')\n    return 1\n"
    assert run_cases(inside, "f", CASES, audit_hook=False).passed == [True]


@needs["namespaces"]
def test_kernel_refuses_the_network() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = (
            "import socket\ndef f(x):\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n    return 1\n"
        )
        r = run_cases(code, "f", CASES, audit_hook=False)
        assert r.passed == [False]
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever connected


@needs["namespaces"]
def test_nothing_the_code_starts_outlives_it() -> None:
    """A process that detaches (setsid, double fork) escapes a process-group kill, not the PID namespace."""
    marker = f"{time.time_ns() % 10**6}.{os.getpid()}"
    code = (
        "import os, sys\ndef f(x):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{marker}'])\n"
        "        os._exit(0)\n"
        "    while True:\n"
        "        pass\n"
    )
    r = run_cases(code, "f", CASES, Limits(wall_s=2, cpu_s=5), audit_hook=False)
    assert r.status == "timeout" and r.passed == [False]
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert left == "", f"processes outlived the sandbox: {left}"


# ---- metadata, host sockets, and the caller's own robustness ----
@pytest.mark.parametrize("hook", [True, False])
def test_metadata_of_files_outside_cannot_change(tmp_path, hook: bool) -> None:
    """chmod, chown, xattrs and times of a host file: the sandbox does not even see it."""
    target = tmp_path / "victim"
    target.write_text("x")
    target.chmod(0o644)
    before = target.stat()
    for call in (
        f"os.chmod({str(target)!r}, 0o4777)",
        f"os.chown({str(target)!r}, 1234, 1234)",
        f"os.setxattr({str(target)!r}, 'user.pwned', b'1')",
        f"os.utime({str(target)!r}, (0, 0))",
        f"import posixpath; posixpath.abspath = lambda p: os.getcwd(); os.chmod({str(target)!r}, 0o4777)",
    ):
        code = f"import os\ndef f(x):\n    {call}\n    return 1\n"
        assert run_cases(code, "f", CASES, audit_hook=hook).passed == [False], call
    after = target.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime) == (before.st_mode, before.st_uid, before.st_mtime)
    assert os.listxattr(target) == []


@pytest.mark.parametrize("hook", [True, False])
def test_no_unix_socket_of_the_host_is_reachable(tmp_path, hook: bool) -> None:
    """Ray's and Docker's sockets are Unix sockets, which a network namespace does not cover: the mount namespace
    (the socket file is not there) and seccomp (no socket at all) do."""
    path = str(tmp_path / "host.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        server.settimeout(0.5)
        direct = f"import socket\ndef f(x):\n    socket.socket(socket.AF_UNIX).connect({path!r})\n    return 1\n"
        spawned = (
            "import _posixsubprocess, os, sys\ndef f(x):\n"
            f"    c = 'import socket; socket.socket(socket.AF_UNIX).connect({path!r})'\n"
            "    os.execv(sys.executable, [sys.executable, '-c', c])\n"
        )
        for code in (direct, spawned):
            assert run_cases(code, "f", CASES, audit_hook=hook).passed == [False]
        with pytest.raises(TimeoutError):
            server.accept()


def test_the_caller_survives_what_the_code_leaves_in_its_folder() -> None:
    """A symlink to a blocking device, garbage result lines, a tree 1,100 deep: run_cases returns in time and
    never raises (the results do not go through the folder)."""
    hostile = [
        "import os\ndef f(x):\n    os.remove('results.jsonl')\n    os.symlink('/proc/kmsg', 'results.jsonl')\n"
        "    return 1\n",
        'def f(x):\n    junk = \'\\n\' * 40 + \'{"signal": "x"}\\n{"layers": 5}\\n[1]\\n\'\n'
        "    open('results.jsonl', 'a').write(junk)\n    return 1\n",
        "import os\ndef f(x):\n    for _ in range(1100):\n        os.mkdir('d')\n        os.chdir('d')\n    return 1\n",
    ]
    for code in hostile:
        t0 = time.monotonic()
        r = run_cases(code, "f", CASES, Limits(wall_s=5), audit_hook=False)
        assert time.monotonic() - t0 < 5 + 3
        assert isinstance(r.passed, list) and len(r.passed) == 1
