"""Why trials stop early: the forgetting budget, a non-finite loss, and ASHA — each recording its reason."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import CombinedStopper, Stopper

from gridrun.builtin import builtin_name
from gridrun.metrics import FORGETTING_METRIC
from gridrun.moasha import MOASHA

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["ForgettingBudget", "NonFiniteLoss", "RecordingASHA", "asha_max_t", "build_stopping"]


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
            self.reasons.setdefault(trial.trial_id, f"asha (behind at {result.get(self._time_attr)} samples)")
        return decision


def build_stopping(spec: ExperimentSpec, reasons: dict[str, str]) -> tuple[RecordingASHA | MOASHA | None, Stopper]:
    """The spec's scheduler (ASHA over samples seen, or none) and stoppers, all recording into ``reasons``.

    ASHA ranks trials by the objective; in pareto mode by (task, forgetting) at once (MOASHA); in constrained mode
    by the task metric (the forgetting budget stops trials over it)."""
    stoppers: list[Stopper] = [NonFiniteLoss(reasons)]
    if spec.forgetting.budget is not None:
        stoppers.append(ForgettingBudget(spec.forgetting.budget, spec.forgetting.patience, reasons))
    scheduler = None
    if spec.scheduler.type == "asha":
        max_t = asha_max_t(spec)
        grace = min(spec.scheduler.grace_period, max_t)
        if spec.objective.mode == "pareto":
            return MOASHA(
                reasons,
                time_attr="samples_seen",
                metrics=(spec.objective.metric, FORGETTING_METRIC),
                modes=(spec.objective.direction, "min"),
                max_t=max_t,
                grace_period=grace,
                reduction_factor=spec.scheduler.reduction_factor,
            ), CombinedStopper(*stoppers)
        constrained = spec.objective.mode == "constrained"
        scheduler = RecordingASHA(
            reasons,
            time_attr="samples_seen",
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
