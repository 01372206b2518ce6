"""Why trials stop early: the forgetting budget, a non-finite loss, and ASHA — each recording its reason."""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import Stopper

__all__ = ["ForgettingBudget", "NonFiniteLoss", "RecordingASHA"]


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
