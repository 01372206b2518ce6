"""Why trials stop early: the forgetting budget, a non-finite loss, ASHA and the search's time budget — each
recording its reason."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import CombinedStopper, Stopper

from forgetting import primary_metric
from gridrun.builtin import builtin_name
from gridrun.moasha import MOASHA

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

log = logging.getLogger("gridrun")

__all__ = [
    "ForgettingBudget",
    "NonFiniteLoss",
    "RecordingASHA",
    "StopReasons",
    "StoppingState",
    "TimeBudget",
    "TimeBudgetStopper",
    "asha_max_t",
    "build_stopping",
    "format_duration",
]


#: This process's stop-reason books: key → trial id → reason (see StopReasons).
_BOOKS: dict[str, dict[str, str]] = {}


class StopReasons(MutableMapping[str, str]):
    """trial id → why it stopped, one book per experiment that every unpickled copy in a process shares.

    Tune restores its stopper from the experiment snapshot (the controller's own state) but its callbacks and
    scheduler from ``tuner.pkl``: two separate unpickled copies. A plain shared dict became two dicts there, and
    the restored stopper recorded its reasons where no callback looked (trials stopped by the budget after a
    resume showed ``stopped``). Every copy of this mapping resolves its book by key instead, so all of them
    write and read one dict, whichever pickle they came from.
    """

    def __init__(self, key: str | None = None) -> None:
        self.key = key or uuid.uuid4().hex
        self._book = _BOOKS.setdefault(self.key, {})

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key, "reasons": dict(self._book)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.key = state["key"]
        self._book = _BOOKS.setdefault(self.key, {})
        for trial_id, reason in state["reasons"].items():
            self._book.setdefault(trial_id, reason)

    def __getitem__(self, trial_id: str) -> str:
        return self._book[trial_id]

    def __setitem__(self, trial_id: str, reason: str) -> None:
        self._book[trial_id] = reason

    def __delitem__(self, trial_id: str) -> None:
        del self._book[trial_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._book)

    def __len__(self) -> int:
        return len(self._book)


class ForgettingBudget(Stopper):
    """Stop a trial whose forgetting metric (``forgetting.primary``'s) stays above ``budget`` for ``patience``
    consecutive evaluations.

    The count follows the trial's position (``samples_seen``), not the number of results seen: a trial restored
    from a checkpoint (after a Ctrl-C, a lost node, a killed driver) reports the rounds after that checkpoint
    again, and Tune's snapshot of this stopper can be a round ahead of the checkpoint it restores. Counting
    calls, the replayed round counted twice and the budget stopped the trial a round early; each round's verdict
    is kept by position instead, and a result at or before a recorded position replaces the rounds from there.
    """

    def __init__(self, metric: str, budget: float, patience: int, reasons: MutableMapping[str, str]) -> None:
        self.metric, self.budget, self.patience, self.reasons = metric, budget, patience, reasons
        self._rounds: dict[str, list[tuple[float | None, bool]]] = {}  # trial -> (samples seen, over budget)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_over" in state:  # pickled before rounds were kept by position: its count, positions unknown
            state["_rounds"] = {t: [(None, True)] * n for t, n in state.pop("_over").items()}
        self.__dict__.update(state)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        delta = result.get(self.metric)
        if delta is None:
            return False
        pos = result.get("samples_seen")
        rounds = self._rounds.setdefault(trial_id, [])
        while pos is not None and rounds and rounds[-1][0] is not None and rounds[-1][0] >= pos:
            rounds.pop()  # a restored trial reporting these rounds again
        rounds.append((pos, delta > self.budget))
        streak = next((i for i, (_, over) in enumerate(reversed(rounds)) if not over), len(rounds))
        if streak >= self.patience:
            self.reasons.setdefault(
                trial_id,
                f"forgetting budget ({self.metric} {delta:.3f} > {self.budget} for {self.patience} evals)",
            )
            return True
        return False

    def stop_all(self) -> bool:
        return False


class NonFiniteLoss(Stopper):
    """Stop a trial as soon as its training loss is NaN or infinite."""

    def __init__(self, reasons: MutableMapping[str, str]) -> None:
        self.reasons = reasons

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        loss = result.get("train/loss")
        if loss is not None and not math.isfinite(loss):
            self.reasons.setdefault(trial_id, "non-finite loss")
            return True
        return False

    def stop_all(self) -> bool:
        return False


class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped, and at how many samples."""

    def __init__(self, reasons: MutableMapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reasons = reasons

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("progress", 0) < 1:
            at = result.get(self._time_attr)
            where = f"{at} samples" if self._time_attr == "samples_seen" else f"{at:.3g} epochs"
            self.reasons.setdefault(trial.trial_id, f"asha (behind at {where})")
        return decision

    def get_state(self) -> dict[str, Any]:
        """Rungs reached and each trial's bracket (``reasons`` is shared, and kept by :class:`StoppingState`)."""
        return {k: v for k, v in self.__dict__.items() if k != "reasons"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class StoppingState(Callback):
    """Carries ASHA's state and the stop reasons through a Tune restore.

    Tune's experiment snapshot holds its stopper (the controller's state: the budget's over-budget counts come
    back by themselves) and its callbacks' ``get_state``, but not its scheduler: that comes back from
    ``tuner.pkl`` as it was at launch, and ASHA forgot its rungs. This callback is pickled in the same
    ``tuner.pkl`` as the scheduler, so after a restore it holds the very object Tune uses, and puts the last
    snapshot's state back into it.
    """

    def __init__(self, scheduler: RecordingASHA | MOASHA | None, reasons: MutableMapping[str, str]) -> None:
        self.scheduler, self.reasons = scheduler, reasons

    def get_state(self) -> dict[str, Any] | None:
        return {"reasons": dict(self.reasons), "asha": self.scheduler.get_state() if self.scheduler else None}

    def set_state(self, state: dict[str, Any]) -> None:
        for trial_id, reason in state.get("reasons", {}).items():
            self.reasons.setdefault(trial_id, reason)
        if self.scheduler is not None and state.get("asha"):
            self.scheduler.set_state(state["asha"])


def format_duration(seconds: float) -> str:
    """``43200`` → ``12h``, ``5400`` → ``1h30m``, ``90`` → ``1m30s``: how a time budget reads in messages."""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v]
    return "".join(parts) or f"{seconds:.1f}s"


class TimeBudget(Callback):
    """The search's wall-time budget (``search.time_budget``): once spent, each running trial is stopped at its
    next report (its current round finishes and is recorded, stop reason ``time budget``), no new trial starts,
    and the search ends when no trial is left mid-round.

    Not Tune's ``TuneConfig(time_budget_s=...)``: that stops every trial at once, dropping the rounds in flight,
    and without completing them (their MLflow runs would read as interrupted and ``resume`` could not continue
    them). Time counts from the search's first step (Ray's start is free), across sessions: the spent time is in
    Tune's experiment snapshots (callback state) and in the experiment's metadata, so ``gridrun resume`` gets
    the remainder.

    Tune restores its stopper from the experiment snapshot but its callbacks from ``tuner.pkl``: two copies
    after a resume. So the state lives here, in the callback, and :class:`TimeBudgetStopper` asks the budget of
    the search running in this process (one per driver) through :attr:`active`.
    """

    active: ClassVar[TimeBudget | None] = None

    def __init__(self, budget_s: float, reasons: MutableMapping[str, str], spent_s: float = 0.0) -> None:
        self.budget_s, self.reasons, self.spent_s = budget_s, reasons, spent_s
        self.not_run: set[str] = set()  # trials the search ended before their first round was recorded
        self._last: float | None = None
        self._trials: list[Any] = []  # Tune's live trial list (statuses change in place)
        self._late: set[str] = set()  # started by a slot freed after the budget ran out
        self._stopped: set[str] = set()  # stopped at their report after the budget ran out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None, "_trials": [], "_late": set(), "_stopped": set(), "_announced": False}

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.budget_s - self.spent_s)

    @property
    def expired(self) -> bool:
        return self.spent_s >= self.budget_s

    def _tick(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.spent_s += now - self._last
        self._last = now

    def setup(self, *args: Any, **info: Any) -> None:
        TimeBudget.active = self
        self._last = None

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._tick()
        self._trials = trials

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.expired:
            self._late.add(trial.trial_id)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._tick()
        if TimeBudget.active is self:
            TimeBudget.active = None

    def get_state(self) -> dict[str, Any] | None:
        return {"spent_s": self.spent_s}

    def set_state(self, state: dict[str, Any]) -> None:
        # the larger of the snapshot's and what resume read from the metadata (written later, at the end)
        self.spent_s = max(self.spent_s, float(state.get("spent_s", 0.0)))

    def stop_trial(self, trial_id: str, result: dict[str, Any]) -> bool:
        """A trial has just reported a round: stop it if the budget is spent (a last round ends it anyway)."""
        self._tick()
        if not self.expired or result.get("progress", 0) >= 1:
            return False
        self._announce()
        self.reasons.setdefault(trial_id, f"time budget ({format_duration(self.budget_s)} spent)")
        self._stopped.add(trial_id)
        return True

    def _announce(self) -> None:
        if not getattr(self, "_announced", False):
            self._announced = True
            log.warning(
                "time budget %s spent: running trials finish their current round, no new trial starts",
                format_duration(self.budget_s),
            )

    def stop_search(self) -> bool:
        """End the search: the budget is spent and no trial that started before that is still mid-round."""
        self._tick()
        if not self.expired:
            return False
        self._announce()
        # A trial stopped at its report stays RUNNING until Tune has saved its checkpoint and completed it: wait
        # for that too, or Tune's stop-all would end it uncompleted. Only late starters that never reported are cut.
        running = {t.trial_id for t in self._trials if t.status == "RUNNING"}
        if running - (self._late - self._stopped):
            return False
        self.not_run = {t.trial_id for t in self._trials if t.status not in ("TERMINATED", "ERROR")}
        return True


class TimeBudgetStopper(Stopper):
    """Tune's side of :class:`TimeBudget`: the decisions of the budget of the search running in this process."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        budget = TimeBudget.active
        return budget is not None and budget.stop_trial(trial_id, result)

    def stop_all(self) -> bool:
        budget = TimeBudget.active
        return budget is not None and budget.stop_search()


def build_stopping(
    spec: ExperimentSpec, reasons: MutableMapping[str, str]
) -> tuple[RecordingASHA | MOASHA | None, Stopper]:
    """The spec's scheduler (ASHA over samples seen, or none) and stoppers, all recording into ``reasons``.

    ASHA ranks trials by the objective; in pareto mode by (task, forgetting.primary's metric) at once (MOASHA); in
    constrained mode by the task metric (the forgetting budget stops trials over it)."""
    stoppers: list[Stopper] = [NonFiniteLoss(reasons)]
    if spec.forgetting.budget is not None:
        stoppers.append(
            ForgettingBudget(primary_metric(spec), spec.forgetting.budget, spec.forgetting.patience, reasons)
        )
    if spec.search.time_budget is not None:
        stoppers.append(TimeBudgetStopper())  # with the TimeBudget callback launch adds
    scheduler = None
    if spec.scheduler.type == "asha":
        axis = spec.scheduler.axis
        max_t = asha_max_t(spec) if axis == "samples_seen" else _largest(spec, "train.epochs", spec.train.epochs)
        grace = min(spec.scheduler.grace_period, max_t)
        if spec.objective.mode == "pareto":
            return MOASHA(
                reasons,
                time_attr=axis,
                metrics=(spec.objective.metric, primary_metric(spec)),
                modes=(spec.objective.direction, "min"),
                max_t=max_t,
                grace_period=grace,
                reduction_factor=spec.scheduler.reduction_factor,
            ), CombinedStopper(*stoppers)
        constrained = spec.objective.mode == "constrained"
        scheduler = RecordingASHA(
            reasons,
            time_attr=axis,
            metric=spec.objective.metric if constrained else "objective",
            mode=spec.objective.direction if constrained else "max",
            max_t=max_t,
            grace_period=grace,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return scheduler, CombinedStopper(*stoppers)


def asha_max_t(spec: ExperimentSpec) -> int:
    """The most samples any trial can see: ASHA stops every trial at ``max_t``, so searched epochs, training sizes
    and sample ratios count at the top of their ranges (a trial sees ``sample_ratio`` of the training set per
    epoch: T-Wix's 500k rows at a ratio of at most 0.05 put the top rung at 25k samples, not 500k)."""
    ratio = _largest(spec, "data.sample_ratio", spec.data.sample_ratio)
    per_epoch = math.ceil(_train_size_upper(spec) * ratio)
    return max(1, round(_largest(spec, "train.epochs", spec.train.epochs) * per_epoch))


def _largest(spec: ExperimentSpec, path: str, fixed: float) -> float:
    """The largest value ``path`` takes in any trial: its fixed value, or the top of its searched range."""
    dist = spec.search.space.get(path)
    if dist is None:
        return fixed
    values = [v for _, v in dist.extremes() if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(values, default=fixed)


def _train_size_upper(spec: ExperimentSpec) -> int:
    """Training-set size before sample_ratio (the upper end of samples a trial can see per epoch); the source's
    row count where it can be read without loading the rows (an upper bound: the held-out eval rows included)."""
    if builtin_name(spec.data.task):
        return int(_largest(spec, "data.train_size", spec.data.train_size))
    from trainables.data import count_rows, load_task_data

    rows = count_rows(spec.data)
    if rows is not None:
        return rows
    train, _ = load_task_data(spec.data, spec.train.seed)
    return len(train)
