"""Why trials stop early: the forgetting budget, a non-finite loss, and ASHA — each recording its reason."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import CombinedStopper, Stopper

from forgetting import primary_metric
from gridrun.builtin import builtin_name

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = [
    "ForgettingBudget",
    "NonFiniteLoss",
    "RecordingASHA",
    "StopReasons",
    "StoppingState",
    "asha_max_t",
    "build_stopping",
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
    consecutive evaluations."""

    def __init__(self, metric: str, budget: float, patience: int, reasons: MutableMapping[str, str]) -> None:
        self.metric, self.budget, self.patience, self.reasons = metric, budget, patience, reasons
        self._over: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        delta = result.get(self.metric)
        if delta is None:
            return False
        self._over[trial_id] = self._over.get(trial_id, 0) + 1 if delta > self.budget else 0
        if self._over[trial_id] >= self.patience:
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
            self.reasons.setdefault(trial.trial_id, f"asha (behind at {result.get(self._time_attr)} samples)")
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

    def __init__(self, scheduler: RecordingASHA | None, reasons: MutableMapping[str, str]) -> None:
        self.scheduler, self.reasons = scheduler, reasons

    def get_state(self) -> dict[str, Any] | None:
        return {"reasons": dict(self.reasons), "asha": self.scheduler.get_state() if self.scheduler else None}

    def set_state(self, state: dict[str, Any]) -> None:
        for trial_id, reason in state.get("reasons", {}).items():
            self.reasons.setdefault(trial_id, reason)
        if self.scheduler is not None and state.get("asha"):
            self.scheduler.set_state(state["asha"])


def build_stopping(spec: ExperimentSpec, reasons: MutableMapping[str, str]) -> tuple[RecordingASHA | None, Stopper]:
    """The spec's scheduler (ASHA over samples seen, or none) and stoppers, all recording into ``reasons``."""
    stoppers: list[Stopper] = [NonFiniteLoss(reasons)]
    if spec.forgetting.budget is not None:
        stoppers.append(
            ForgettingBudget(primary_metric(spec), spec.forgetting.budget, spec.forgetting.patience, reasons)
        )
    scheduler = None
    if spec.scheduler.type == "asha":
        max_t = asha_max_t(spec)
        scheduler = RecordingASHA(
            reasons,
            time_attr="samples_seen",
            metric="objective",
            mode="max",
            max_t=max_t,
            grace_period=min(spec.scheduler.grace_period, max_t),
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
