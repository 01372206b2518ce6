"""SnapshotOnTrialEnd: one waited save of Tune's experiment state after a trial ends, kept to a share of the
driver's time, and end lines printed only once their save is made. The real Tune run (SIGKILL, then resume, no
finished trial run again) is tests/test_resume_e2e.py."""

from __future__ import annotations

import logging
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from gridrun import snapshots
from gridrun.progress import ProgressPrinter
from gridrun.snapshots import SnapshotOnTrialEnd


class Controller:
    """Stands in for Tune's controller: records each save in the shared ``events``, taking ``took_s`` of the
    saver's clock."""

    def __init__(self, events: list[str], clock: list[float], took_s: float = 0.1) -> None:
        self.events, self.clock, self.took_s = events, clock, took_s
        self.calls: list[dict[str, bool]] = []

    def checkpoint(self, force: bool = False, wait: bool = False) -> None:
        self.calls.append({"force": force, "wait": wait})
        self.clock[0] += self.took_s
        self.events.append("save")


def _trial(tid: str) -> Any:
    return SimpleNamespace(trial_id=tid, config={}, last_result={"objective": 0.5, "samples_seen": 64}, path="p")


def _pair(monkeypatch: pytest.MonkeyPatch, controller: Any) -> tuple[SnapshotOnTrialEnd, ProgressPrinter, list]:
    """A saver on ``controller`` and a printer after it, their clock at 100 s; lines go to the shared events."""
    monkeypatch.setattr(snapshots, "_running_controller", lambda: controller)
    saver = SnapshotOnTrialEnd()
    clock = controller.clock if controller is not None else [100.0]
    monkeypatch.setattr(saver, "_now", lambda: clock[0])
    printer = ProgressPrinter("task/x", "forget/delta", {}, total=4, saver=saver)
    events = controller.events if controller is not None else []
    monkeypatch.setattr(printer, "_say", lambda text: events.append(text))
    saver.setup()
    return saver, printer, events


def _step(saver: SnapshotOnTrialEnd, printer: ProgressPrinter, *ended: str) -> None:
    """One Tune step: ``ended`` trials complete, then the step ends (callbacks in list order)."""
    for tid in ended:
        for cb in (saver, printer):
            cb.on_trial_complete(0, [], _trial(tid))
    for cb in (saver, printer):
        cb.on_step_end(0, [])


def test_a_trial_end_is_saved_and_waited_for_before_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    controller = Controller(events, [100.0])
    saver, printer, _ = _pair(monkeypatch, controller)
    _step(saver, printer)  # nothing ended: no save
    assert events == [] and controller.calls == []
    _step(saver, printer, "a", "b")  # two ends in one step: one save, then both lines
    assert controller.calls == [{"force": True, "wait": True}]
    assert events[0] == "save" and "trial a done (1/4)" in events[1] and "trial b done (2/4)" in events[2]
    assert len(events) == 3 and saver.saves == 1 and saver.save_s == pytest.approx(0.1)


def test_saves_keep_to_their_share_and_lines_wait_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a save of 0.1 s, the next waits 19 x 0.1 s (5%); the ends in between are held, then saved at once."""
    events: list[str] = []
    clock = [100.0]
    saver, printer, _ = _pair(monkeypatch, Controller(events, clock))
    _step(saver, printer, "a")
    assert events[0] == "save" and len(events) == 2
    clock[0] += 1.0  # 1 s after the first save: within its 1.9 s wait
    _step(saver, printer, "b")
    _step(saver, printer)
    assert len(events) == 2 and saver.due  # b's end is not saved yet, and its line is held
    clock[0] += 0.9  # the wait is over
    _step(saver, printer, "c")
    assert events[2] == "save" and "trial b done (2/4)" in events[3] and "trial c done (3/4)" in events[4]
    assert saver.saves == 2 and not saver.due


def test_without_a_controller_lines_are_not_held_and_tune_saves_as_before(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Ray where the controller cannot be found: a warning, Tune's periodic saves only, lines at the step's end."""
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        saver, printer, events = _pair(monkeypatch, None)
    assert "may run trials again that had finished" in caplog.text
    _step(saver, printer, "a")
    assert len(events) == 1 and "trial a done (1/4)" in events[0] and saver.saves == 0


def test_a_controller_that_saves_differently_degrades_to_tunes_saves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []

    class Renamed(Controller):
        def checkpoint(self, force_all: bool = False) -> None:  # type: ignore[override]
            raise AssertionError("not called with these arguments")

    saver, printer, _ = _pair(monkeypatch, Renamed(events, [100.0]))
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        _step(saver, printer, "a")
    assert "cannot save the experiment state when a trial ends" in caplog.text
    assert not saver.due and len(events) == 1 and "trial a done" in events[0]
    _step(saver, printer, "b")  # no further tries
    assert len(events) == 2 and saver.saves == 0


def test_the_running_controller_is_found_from_its_setup_call() -> None:
    """Tune calls its callbacks' setup from TuneController.setup_experiments: the controller is that frame's self."""
    from ray.tune.execution.tune_controller import TuneController

    controller = object.__new__(TuneController)  # no Ray needed: only its type is looked at

    def setup_experiments(self: Any) -> Any:  # as the controller's method calls the callbacks
        return snapshots._running_controller()

    assert setup_experiments(controller) is controller
    assert snapshots._running_controller() is None  # called from anything else


def test_the_saver_pickles_without_its_controller() -> None:
    """The Tuner pickles its callbacks; a printer and its saver come back together, the saver without a controller
    until Tune sets it up again."""
    saver = SnapshotOnTrialEnd()
    printer = ProgressPrinter("task/x", "forget/delta", {}, saver=saver)
    saver._controller = Controller([], [100.0])
    saver.on_trial_complete(0, [], _trial("a"))
    assert saver.due
    back_saver, back_printer = pickle.loads(pickle.dumps([saver, printer]))
    assert back_printer.saver is back_saver and not back_saver.due and back_saver._controller is None


def test_an_upload_tune_logs_as_failed_is_not_counted_as_saved(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Tune swallows a failed or timed-out upload of its state and only logs it (experiment_state.py): the end stays
    unsaved, its line held, and the next save (after the wait) tries again."""
    events: list[str] = []

    class Failing(Controller):
        fail = True

        def checkpoint(self, force: bool = False, wait: bool = False) -> None:
            super().checkpoint(force, wait)
            if self.fail:
                logging.getLogger(snapshots._TUNE_STATE_LOGGER).error("Saving experiment state ... failed")

    controller = Failing(events, [100.0])
    saver, printer, _ = _pair(monkeypatch, controller)
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        _step(saver, printer, "a")
    assert "could not save the experiment state" in caplog.text
    assert events == ["save"] and saver.due  # a's line held: its end is not on storage
    controller.fail = False
    controller.clock[0] += 2.0  # after the wait
    _step(saver, printer)
    assert events[1] == "save" and "trial a done (1/4)" in events[2] and not saver.due


def test_one_slow_save_holds_later_lines_a_minute_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30 s upload (an object store stalling) would mean 19 x 30 s without saves; the wait is capped."""
    events: list[str] = []
    controller = Controller(events, [100.0], took_s=30.0)
    saver, printer, _ = _pair(monkeypatch, controller)
    _step(saver, printer, "a")
    controller.took_s = 0.1
    controller.clock[0] += snapshots.MAX_WAIT_S - 1
    _step(saver, printer, "b")
    assert saver.due and len(events) == 2  # still within the capped wait
    controller.clock[0] += 1
    _step(saver, printer)
    assert events[2] == "save" and "trial b done (2/4)" in events[3]


def test_a_resumed_experiment_from_before_the_saver_gets_one_and_its_printer_holds_lines() -> None:
    from ray.tune.logger import CSVLoggerCallback

    from gridrun.launch import _add_missing_callbacks

    old = pickle.loads(pickle.dumps(ProgressPrinter("task/x", "forget/delta", {}, total=4)))
    callbacks: list[Any] = [old]
    _add_missing_callbacks(callbacks)
    assert isinstance(callbacks[-1], SnapshotOnTrialEnd) and old.saver is callbacks[-1]
    assert any(isinstance(c, CSVLoggerCallback) for c in callbacks)
    again = list(callbacks)
    _add_missing_callbacks(again)
    assert again == callbacks  # nothing added twice
