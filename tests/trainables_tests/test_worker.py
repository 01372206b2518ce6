"""A worker's SIGTERM landing in a ``__del__``: Ray's handler's SystemExit prints no traceback once
``quiet_teardown`` is on; other unraisable errors and ordinary errors still print theirs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

#: What a Ray worker does at its end, in one process: Ray's SIGTERM handler (the same name, the same call) is
#: installed, and the signal arrives while the garbage collector runs a finalizer.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from ray._raylet import raise_sys_exit_with_custom_error_message
    if sys.argv[1] == "quiet":
        from trainables.worker import quiet_teardown
        quiet_teardown()

    def sigterm_handler(signum, frame):  # ray._private.worker's, word for word
        raise_sys_exit_with_custom_error_message("The process receives a SIGTERM.", exit_code=1)

    signal.signal(signal.SIGTERM, sigterm_handler)

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # bytecode after the signal: its handler runs here, inside __del__

    class Broken:
        def __del__(self):
            raise ValueError("a real error in a finalizer")

    Finalized()
    print("went on after the SIGTERM", flush=True)
    Broken()
    raise RuntimeError("a real error")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_sigterm_systemexit_in_a_finalizer_prints_nothing_but_real_errors_do() -> None:
    loud = _run("loud")  # the traceback the console showed, reproduced without the hook
    assert "Exception ignored in" in loud.stderr and "sigterm_handler" in loud.stderr, loud.stderr
    assert "SystemExit: 1" in loud.stderr

    quiet = _run("quiet")
    assert "went on after the SIGTERM" in quiet.stdout
    assert "SystemExit" not in quiet.stderr and "sigterm_handler" not in quiet.stderr, quiet.stderr
    assert "ValueError: a real error in a finalizer" in quiet.stderr  # other unraisable errors still print
    assert "RuntimeError: a real error" in quiet.stderr and quiet.returncode == 1  # and errors as ever
