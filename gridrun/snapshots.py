"""Tune's experiment snapshot saved, and on storage, as soon as a trial ends, so a killed driver reruns no trial
that had finished.

Tune saves its experiment state (trial statuses, the searcher, callback states) only every
``TUNE_GLOBAL_CHECKPOINT_S`` seconds: "auto", at least 10 s and 19x the time a save takes. A driver SIGKILLed
(OOM killer, a preempted head node) in that window leaves finished trials RUNNING in the saved state, and
``gridrun resume`` runs them again: on a GPU, a whole trial's GPU time each. A small fixed period would save at
every step of Tune's loop (ten a second when idle, each costing more as trials accumulate) and still leave a
window; so :class:`SnapshotOnTrialEnd` asks for one save, waited until it is on storage, at the end of a step in
which a trial completed or errored, as Tune itself saves when its loop ends (``checkpoint(force=True,
wait=True)``). Tune's periodic saves go on as before. :class:`~gridrun.progress.ProgressPrinter` prints a trial's
end line after that save, so a printed "done" line means a resume will not run that trial again.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

__all__ = ["SnapshotOnTrialEnd"]

log = logging.getLogger("gridrun")

#: The longest wait between two of these saves: one slow upload (an object store stalling for a minute) must not
#: hold every later end line for 19 times as long.
MAX_WAIT_S = 60.0
#: Where Tune logs, and swallows, a failed or timed-out upload of its experiment state (experiment_state.py).
_TUNE_STATE_LOGGER = "ray.tune.execution.experiment_state"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _logged_errors(name: str) -> Iterator[list[logging.LogRecord]]:
    """The ERROR records logger ``name`` emits inside the block (Tune reports a failed upload only there)."""
    handler, logger = _Records(), logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def _running_controller() -> Any | None:
    """The TuneController whose ``setup_experiments`` is calling this callback's ``setup``, or None.

    Tune hands its callbacks no handle on the controller, and only the controller can save the experiment state
    (``TuneController.checkpoint``, what Tune calls itself when its loop ends): so it is found as the ``self`` of a
    calling frame. A Ray that calls ``setup`` from elsewhere, or renames the class, gives None: Tune's periodic
    saves alone then, as before this callback, never a crash.
    """
    try:
        from ray.tune.execution.tune_controller import TuneController
    except ImportError:
        return None
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, TuneController) and callable(getattr(owner, "checkpoint", None)):
                return owner
            frame = frame.f_back
        return None
    finally:
        del frame  # a frame held in a local keeps every caller's locals alive


class SnapshotOnTrialEnd(Callback):
    """Save Tune's experiment snapshot, and wait until it is on storage, at the end of a step in which a trial
    completed or errored (one save however many ended in that step).

    A save's cost grows with the trials it holds (Tune's state of every trial, the searcher, the callbacks, and an
    upload of the whole experiment folder: 25 ms for the first trials, 190-220 ms at 200 on 2 busy cores, measured
    by bench/state_saves.py), and a save at every end cost 200 replayed trials 27 s. So these saves are kept to
    ``share`` of the driver's time, as Tune keeps its own periodic ones to 5%: after a save taking t seconds the
    next waits ``t * (1 - share) / share`` (19 t at 5%). Ends within that wait are saved together when it is over:
    nothing waits when trials end minutes apart; with 200 replayed trials ending every 0.3 s, an end waited 1-1.4 s
    for its save (median), 6 s at most, against 10 s for Tune's period alone.
    :attr:`due` says an end is not saved yet: :class:`~gridrun.progress.ProgressPrinter` holds its end lines until
    it is not, so a printed end line always means the saved state holds that end.

    Args:
        share: the most of the driver's time these saves may take (0 < share <= 1).
    """

    def __init__(self, share: float = 0.05) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.saves = 0  # snapshots this callback saved in this driver
        self.save_s = 0.0  # the seconds they took (state written, uploaded, upload waited for)
        self._ended = False  # a trial ended that no snapshot saved here holds yet
        self._next_s = 0.0  # monotonic time before which no save is made (the share's wait)
        self._controller: Any = None

    # The Tuner pickles its callbacks (tuner.pkl): the controller is this driver's, found again at each setup.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_controller": None, "_ended": False, "_next_s": 0.0}

    @property
    def due(self) -> bool:
        """A trial ended and the snapshot that holds its end is still to be saved (never, without a controller)."""
        return self._ended and self._controller is not None

    def _now(self) -> float:
        return time.monotonic()

    def setup(self, *args: Any, **info: Any) -> None:
        self._controller = _running_controller()
        if self._controller is None:
            log.warning(
                "this Ray Tune gives gridrun no way to save its experiment state when a trial ends: a driver killed "
                "within Tune's save period (10 s or more) may run trials again that had finished"
            )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended = True

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended = True

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # At the step's end: Tune marks a trial TERMINATED after its on_trial_complete, and tells the searcher
        # before; a snapshot saved here holds both, consistently.
        if not self.due or self._now() < self._next_s:
            return
        t0 = self._now()
        try:
            with _logged_errors(_TUNE_STATE_LOGGER) as failed:
                self._controller.checkpoint(force=True, wait=True)
            if failed:  # Tune logs a failed or timed-out upload instead of raising: the end is not on storage
                log.warning("could not save the experiment state after a trial ended: %s", failed[0].getMessage())
            else:
                self._ended = False
        except (TypeError, AttributeError) as e:  # a Ray whose controller saves differently: its own saves only
            log.warning("cannot save the experiment state when a trial ends with this Ray Tune: %s", e)
            self._controller = None
            return
        except Exception as e:  # tried again after the wait; Tune's own saves raise if storage is really gone
            log.warning("could not save the experiment state after a trial ended: %s", e)
        took = self._now() - t0
        self.saves += 1
        self.save_s += took
        self._next_s = self._now() + min(took * (1 - self.share) / self.share, MAX_WAIT_S)
