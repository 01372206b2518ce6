"""A trial worker's teardown without a traceback on the console.

Ray ends a worker process with SIGTERM (at ``ray.shutdown``, when Tune lets a finished trial's actor go); its
handler (``sigterm_handler`` in ``ray._private.worker``) raises ``SystemExit(1)`` wherever the main thread is.
When that is a weakref callback or a ``__del__`` (the garbage collector runs them at any bytecode), Python cannot
raise there: it prints "Exception ignored in: ... SystemExit: 1" with a traceback (Ray relays worker stderr to the
driver's console) and goes on, and the worker exits anyway. Found in this machine's Ray worker logs:
``Exception ignored in: <function WeakSet.__init__.<locals>._remove ...>`` ending in Ray's ``sigterm_handler``.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["quiet_teardown"]


def _from_sigterm(unraisable: Any) -> bool:
    """A SystemExit that a SIGTERM handler raised where Python could not raise it."""
    if not isinstance(unraisable.exc_value, SystemExit):
        return False
    tb = unraisable.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "sigterm_handler":
            return True
        tb = tb.tb_next
    return False


def quiet_teardown() -> None:
    """In this (worker) process, drop the unraisable SystemExit born in Ray's SIGTERM handler; every other
    unraisable exception is reported as before, and errors a trial raises go through Tune as always."""
    if getattr(sys.unraisablehook, "gridrun_quiet_teardown", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _from_sigterm(unraisable):
            previous(unraisable)

    hook.gridrun_quiet_teardown = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
