"""Console lines: one per trial start and end, and one per running trial at least every ``every_s`` seconds with
an estimate of the time left (Tune's own tables are switched off: too much for a terminal)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from gridrun.metrics import stop_reason

if TYPE_CHECKING:
    from gridrun.snapshots import SnapshotOnTrialEnd

__all__ = ["ProgressPrinter"]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, int | float) else "-"


def _duration(s: float) -> str:
    s = max(0, round(s))
    return f"{s} s" if s < 120 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


class ProgressPrinter(Callback):
    """One line per trial start and end, and a line per running trial at least every ``every_s`` seconds.

    A trial's end line shows its ``last`` evaluation round and its ``best`` one by objective (the checkpoint the
    summary table and the registered adapter come from; ties go to the later round, as the checkpoint keeper's).
    End lines are printed at the end of Tune's step once ``saver`` (listed before this callback) has saved the
    experiment state that holds those ends: a printed end line means a resume runs that trial no more.
    """

    def __init__(
        self,
        metric: str,
        forget_metric: str,
        reasons: Mapping[str, str],
        quiet: bool = False,
        total: int | None = None,
        every_s: float = 30.0,
        saver: SnapshotOnTrialEnd | None = None,
    ) -> None:
        self.metric, self.forget_metric, self.reasons = metric, forget_metric, reasons
        self.quiet, self.done, self.total = quiet, 0, total
        self.every_s = every_s
        self._retrying: set[str] = set()
        self._seen: set[str] = set()  # trials started in this experiment (a resumed one continues them)
        self._best: dict[str, dict[str, Any]] = {}  # trial_id -> its result with the highest objective
        self._began: dict[str, float] = {}  # trial_id -> when it (re)started here, monotonic
        self._durations: list[float] = []  # wall time of the trials finished in this session
        self._last_line = 0.0
        self.saver = saver
        self._ends: list[str] = []  # end lines held until the snapshot that holds those ends is saved

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_ends": [], "saver": None, **state})  # a printer pickled before it held end lines

    # Kept in Tune's experiment snapshot, so a resumed experiment counts on from where it was.
    def get_state(self) -> dict[str, Any] | None:
        return {"done": self.done, "seen": sorted(self._seen), "best": dict(self._best)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.done = int(state.get("done", 0))
        self._seen.update(state.get("seen", []))
        self._best.update(state.get("best", {}))

    def _now(self) -> float:
        return time.monotonic()

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[gridrun] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        self._began[tid] = self._now()
        self._last_line = self._last_line or self._now()
        if tid in self._retrying:
            self._retrying.discard(tid)
            self._say(f"trial {tid} restarted from its last checkpoint")
            return
        if tid in self._seen:
            self._say(f"trial {tid} continued from its last checkpoint")
            return
        self._seen.add(tid)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        self._say(f"trial {tid} started: {params}")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        obj = result.get("objective")
        if not (isinstance(obj, int | float) and math.isfinite(obj)):
            return
        best = self._best.get(trial.trial_id)
        if best is None or obj >= best["objective"]:
            keep = (self.metric, self.forget_metric, "objective", "samples_seen")
            self._best[trial.trial_id] = {k: result.get(k) for k in keep}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        self._ended(trial.trial_id)
        m = trial.last_result or {}
        why = stop_reason(self.reasons, trial.trial_id, m)
        line = (
            f"trial {trial.trial_id} done ({self.done}/{self.total or len(trials)}): last {self.metric} "
            f"{_fmt(m.get(self.metric))}, {self.forget_metric} {_fmt(m.get(self.forget_metric))}, objective "
            f"{_fmt(m.get('objective'))} at {m.get('samples_seen')} samples"
        )
        b = self._best.pop(trial.trial_id, None)  # its end line is the last that needs it
        if b is not None:
            line += (
                f"; best {self.metric} {_fmt(b.get(self.metric))}, "
                f"{self.forget_metric} {_fmt(b.get(self.forget_metric))}, "
                f"objective {_fmt(b.get('objective'))} at {b.get('samples_seen')} samples"
            )
        self._ends.append(f"{line} — {why}")

    def _ended(self, tid: str) -> None:
        began = self._began.pop(tid, None)
        if began is not None:
            self._durations.append(self._now() - began)

    def _say_ends(self, now: bool = False) -> None:
        if not now and self.saver is not None and self.saver.due:
            return
        for line in self._ends:
            self._say(line)
        self._ends.clear()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """The end lines of trials whose end is saved; and at least every ``every_s`` seconds, a line per running
        trial, with the time it and the run have left."""
        self._say_ends()
        now = self._now()
        if not self._last_line or now - self._last_line < self.every_s:
            return
        self._last_line = now
        running = [t for t in trials if t.status == "RUNNING" and t.trial_id in self._began]
        totals: list[float] = []  # estimated whole durations of the running trials
        for t in running:
            elapsed = now - self._began[t.trial_id]
            m = t.last_result or {}
            progress = m.get("progress")
            if isinstance(progress, int | float) and 0 < progress <= 1:
                totals.append(elapsed / progress)
                left = f"{m.get('samples_seen')} samples ({progress:.0%}), about {_duration(totals[-1] - elapsed)} left"
            else:
                left = "no evaluation round yet"
            self._say(f"trial {t.trial_id} running {_duration(elapsed)}: {left}")
        eta = self._experiment_left(running, now, totals)
        if running and eta is not None:
            self._say(f"{self.done}/{self.total or len(trials)} trials done; at most about {_duration(eta)} left")

    def _experiment_left(self, running: list[Any], now: float, totals: list[float]) -> float | None:
        """Running trials' time left, then the waiting ones at the mean trial duration (ASHA prunes some early,
        so this is an upper estimate)."""
        per_trial = self._durations or totals
        if not per_trial or self.total is None:
            return None
        mean = sum(per_trial) / len(per_trial)
        lefts = [max(0.0, mean - (now - self._began[t.trial_id])) for t in running]
        waiting = max(0, self.total - self.done - len(running))
        return max(lefts, default=0.0) + math.ceil(waiting / max(1, len(running))) * mean

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._retrying.add(trial.trial_id)
        n, most = getattr(trial, "num_failures", "?"), getattr(trial, "max_failures", "?")
        self._say(f"trial {trial.trial_id} lost its worker or failed; retry {n}/{most} from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        self._ended(trial.trial_id)
        self._ends.append(f"trial {trial.trial_id} failed; see {trial.path}/error.txt")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._say_ends(now=True)  # Tune saved its whole state first (unless that failed: then these are news)
