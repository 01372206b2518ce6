"""Console lines: one per trial start and end (Tune's own tables are switched off: too much for a terminal)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune import Callback

from gridrun.metrics import stop_reason

__all__ = ["ProgressPrinter"]


class ProgressPrinter(Callback):
    """One line per trial start and end (Tune's own tables are switched off: too much for a terminal)."""

    def __init__(
        self,
        metric: str,
        forget_metric: str,
        reasons: Mapping[str, str],
        quiet: bool = False,
        total: int | None = None,
    ) -> None:
        self.metric, self.forget_metric, self.reasons = metric, forget_metric, reasons
        self.quiet, self.done, self.total = quiet, 0, total
        self._retrying: set[str] = set()

    # Kept in Tune's experiment snapshot, so a resumed experiment counts on from where it was.
    def get_state(self) -> dict[str, Any] | None:
        return {"done": self.done}

    def set_state(self, state: dict[str, Any]) -> None:
        self.done = int(state.get("done", 0))

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"[gridrun] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self._retrying:
            self._retrying.discard(trial.trial_id)
            self._say(f"trial {trial.trial_id} restarted from its last checkpoint")
            return
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        self._say(f"trial {trial.trial_id} started: {params}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        m = trial.last_result or {}
        why = stop_reason(self.reasons, trial.trial_id, m)
        fmt = lambda v: f"{v:.4g}" if isinstance(v, int | float) else "-"  # noqa: E731
        self._say(
            f"trial {trial.trial_id} done ({self.done}/{self.total or len(trials)}): "
            f"{self.metric} {fmt(m.get(self.metric))}, "
            f"{self.forget_metric} {fmt(m.get(self.forget_metric))}, objective {fmt(m.get('objective'))} at "
            f"{m.get('samples_seen')} samples — {why}"
        )

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._retrying.add(trial.trial_id)
        n, most = getattr(trial, "num_failures", "?"), getattr(trial, "max_failures", "?")
        self._say(f"trial {trial.trial_id} lost its worker or failed; retry {n}/{most} from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        self._say(f"trial {trial.trial_id} failed; see {trial.path}/error.txt")
