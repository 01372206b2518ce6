"""The Optuna searcher of a study: its sampler, what it is told per objective mode, and its warm start.

Ray's ``OptunaSearch`` tells Optuna one value (or one per metric) when a trial completes; constrained mode also
needs the trial's forgetting told as an Optuna constraint (``Trial.set_constraint``, which Optuna 5's TPE and
NSGA-II samplers read), and a warm start needs finished trials with several values and constraints, which its
``evaluated_rewards`` cannot carry: the small subclass here adds both.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from gridrun.warm_start import CONSTRAINT

__all__ = ["GridrunOptunaSearch", "build_searcher"]


class GridrunOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that seeds its study with ``warm`` trials and, given a ``budget``, tells each completed
    trial's forgetting (``forget_metric``, forgetting.primary's) as the constraint ``forgetting - budget <= 0``."""

    def __init__(
        self,
        *args: Any,
        warm: list[Any] | None = None,
        budget: float | None = None,
        forget_metric: str = "",
        **kwargs: Any,
    ) -> None:
        self._warm, self._budget, self._forget_metric = list(warm or []), budget, forget_metric
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        if self._warm and self._ot_study is not None:
            self._ot_study.add_trials(self._warm)
            self._warm = []  # added once (a restored searcher keeps its study)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        delta = (result or {}).get(self._forget_metric)
        if (
            self._budget is not None
            and ot_trial is not None
            and delta is not None
            and trial_id not in self._completed_trials
        ):
            ot_trial.set_constraint(CONSTRAINT, float(delta) - self._budget)
        super().on_trial_complete(trial_id, result=result, error=error)


def build_searcher(spec: Any, searched: dict[str, Any], warm: list[Any] | None = None) -> GridrunOptunaSearch | None:
    """The spec's searcher over ``searched`` (None when nothing is searched), seeded with ``warm`` trials."""
    import optuna

    from forgetting import primary_metric

    s = spec.search
    if not searched:
        return None  # nothing to search: every trial runs the fixed config (repeats differ only if seeds do)
    if s.sampler == "random":
        sampler: Any = optuna.samplers.RandomSampler(seed=s.seed)
    elif s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed)
    elif s.sampler == "gp":
        # Optuna's GP reads each mode's needs off the study itself: several values (log EHVI), the constraint
        # told by set_constraint (constrained EI), and the trials still running (q-batch EI), so nothing to pass
        sampler = optuna.samplers.GPSampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False
        )
    else:
        sampler = optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True, constant_liar=True
        )
    mode = spec.objective.mode
    if mode == "pareto":
        metric: Any = [spec.objective.metric, primary_metric(spec)]
        direction: Any = [spec.objective.direction, "min"]
    elif mode == "constrained":
        metric, direction = spec.objective.metric, spec.objective.direction
    else:
        metric, direction = "objective", "max"
    budget = spec.forgetting.budget if mode == "constrained" else None
    return GridrunOptunaSearch(
        space=searched,
        metric=metric,
        mode=direction,
        sampler=sampler,
        warm=warm,
        budget=budget,
        forget_metric=primary_metric(spec),
    )
