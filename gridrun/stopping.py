"""Why trials stop early: the forgetting budget, a non-finite loss, ASHA and the search's time budget — each
recording its reason."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import CombinedStopper, Stopper

from gridrun.builtin import builtin_name
from gridrun.metrics import FORGETTING_METRIC
from gridrun.moasha import MOASHA

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

log = logging.getLogger("gridrun")

__all__ = [
    "ForgettingBudget",
    "NonFiniteLoss",
    "RecordingASHA",
    "TimeBudget",
    "TimeBudgetStopper",
    "asha_max_t",
    "build_stopping",
    "format_duration",
]


class ForgettingBudget(Stopper):
    """Stop a trial whose ``forget/delta`` stays above ``budget`` for ``patience`` consecutive evaluations."""

    def __init__(self, budget: float, patience: int, reasons: dict[str, str]) -> None:
        self.budget, self.patience, self.reasons = budget, patience, reasons
        self._over: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        delta = result.get("forget/delta")
        if delta is None:
            return False
        self._over[trial_id] = self._over.get(trial_id, 0) + 1 if delta > self.budget else 0
        if self._over[trial_id] >= self.patience:
            self.reasons.setdefault(
                trial_id,
                f"forgetting budget (forget/delta {delta:.3f} > {self.budget} for {self.patience} evals)",
            )
            return True
        return False

    def stop_all(self) -> bool:
        return False


class NonFiniteLoss(Stopper):
    """Stop a trial as soon as its training loss is NaN or infinite."""

    def __init__(self, reasons: dict[str, str]) -> None:
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

    def __init__(self, reasons: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reasons = reasons

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("progress", 0) < 1:
            at = result.get(self._time_attr)
            where = f"{at} samples" if self._time_attr == "samples_seen" else f"{at:.3g} epochs"
            self.reasons.setdefault(trial.trial_id, f"asha (behind at {where})")
        return decision


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

    def __init__(self, budget_s: float, reasons: dict[str, str], spent_s: float = 0.0) -> None:
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


def build_stopping(spec: ExperimentSpec, reasons: dict[str, str]) -> tuple[RecordingASHA | MOASHA | None, Stopper]:
    """The spec's scheduler (ASHA over samples seen, or none) and stoppers, all recording into ``reasons``.

    ASHA ranks trials by the objective; in pareto mode by (task, forgetting) at once (MOASHA); in constrained mode
    by the task metric (the forgetting budget stops trials over it)."""
    stoppers: list[Stopper] = [NonFiniteLoss(reasons)]
    if spec.forgetting.budget is not None:
        stoppers.append(ForgettingBudget(spec.forgetting.budget, spec.forgetting.patience, reasons))
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
                metrics=(spec.objective.metric, FORGETTING_METRIC),
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
    """The most samples any trial can see: ASHA stops every trial at ``max_t``, so searched epochs and training
    sizes count at the top of their ranges."""
    return max(1, round(_largest(spec, "train.epochs", spec.train.epochs) * _train_size_upper(spec)))


def _largest(spec: ExperimentSpec, path: str, fixed: float) -> float:
    """The largest value ``path`` takes in any trial: its fixed value, or the top of its searched range."""
    dist = spec.search.space.get(path)
    if dist is None:
        return fixed
    values = [v for _, v in dist.extremes() if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(values, default=fixed)


def _train_size_upper(spec: ExperimentSpec) -> int:
    """Training-set size before sample_ratio (the upper end of samples a trial can see per epoch)."""
    if builtin_name(spec.data.task):
        return int(_largest(spec, "data.train_size", spec.data.train_size))
    from trainables.data import load_task_data

    train, _ = load_task_data(spec.data, spec.train.seed)
    return len(train)
