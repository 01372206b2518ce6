"""The spec sections that say how trials are searched and ranked: the objective (penalized, pareto or constrained),
the search (space, sampler, warm start, time budget) and the early-stopping scheduler."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from gridrun.spec.base import Section as _Section
from gridrun.spec.space import Distribution, parse_distribution, to_yaml

__all__ = ["ObjectiveSpec", "SchedulerSpec", "SearchSpec"]


class ObjectiveSpec(_Section):
    """What the search maximises."""

    metric: str = Field("task/format_success", description="task metric the objective is built on")
    direction: Literal["max", "min"] = Field("max", description="whether the task metric is better high or low")
    penalty: float = Field(1.0, ge=0, description="objective = task - penalty * max(0, forgetting.primary's metric)")
    mode: Literal["penalized", "pareto", "constrained"] = Field(
        "penalized",
        description="penalized: the scalar objective; pareto: task vs forgetting (MOASHA stops trials on both); "
        "constrained: the task metric subject to forgetting.primary's metric <= forgetting.budget (an Optuna "
        "constraint)",
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="weighted sum of task metrics reported as task/weighted (set metric: task/weighted to use it)",
    )
    min_gain: float | None = Field(
        None,
        ge=0,
        description="a trial whose task metric does not beat the base model's by this much ranks below every one "
        "that does",
    )

    @model_validator(mode="after")
    def _weights(self) -> ObjectiveSpec:
        bad = [k for k in self.weights if not k.startswith("task/")]
        if bad:
            raise ValueError(f"weights: '{bad[0]}' is not a task/<name> metric")
        if self.weights and self.metric != "task/weighted":
            raise ValueError("weights are set: objective.metric must be task/weighted")
        if self.metric == "task/weighted" and not self.weights:
            raise ValueError("metric task/weighted needs objective.weights")
        return self

    @field_validator("metric")
    @classmethod
    def _namespaced(cls, v: str) -> str:
        if not v.startswith("task/"):
            raise ValueError("objective metric must be a task/<name> metric")
        return v


class SearchSpec(_Section):
    """The search: Optuna over `space`, keys are dotted spec paths (e.g. train.lr)."""

    space: dict[str, Distribution] = Field(default_factory=dict, description="dotted spec path → distribution")
    num_trials: int = Field(12, gt=0, description="trials to run")
    max_concurrent: int | None = Field(None, gt=0, description="trials at once (default: what resources allow)")
    sampler: Literal["tpe", "gp", "random", "nsga2"] = Field(
        "tpe",
        description="Optuna sampler: tpe, gp (a Gaussian process: ~0.1-1 s of CPU per suggestion), random, nsga2",
    )
    n_startup_trials: int = Field(6, ge=0, description="random trials before TPE or GP starts modelling")
    seed: int = Field(0, description="sampler seed")
    warm_start: str | None = Field(
        None,
        description="seed the sampler with an earlier study's trials: its experiment folder, or its MLflow parent "
        "run id (same searched names; values outside this space are dropped)",
    )
    time_budget: float | None = Field(
        None,
        description="wall time the search may take (90s, 30m, 12h, 1h30m, or seconds): then running trials finish "
        "their current round and are recorded, no new trial starts; `gridrun resume` gets what is left",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _parse_duration(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            raise ValueError("not a duration; write e.g. 90s, 30m, 12h, 1h30m, or seconds")
        if isinstance(v, str) and not v.strip().replace(".", "", 1).isdigit():
            import pandas as pd  # a maintained duration parser already installed (MLflow needs pandas)

            try:
                v = pd.Timedelta(v.strip()).total_seconds()
            except ValueError:
                raise ValueError("not a duration; write e.g. 90s, 30m, 12h, 1h30m, or seconds") from None
        try:
            seconds = float(v)
        except (TypeError, ValueError):
            raise ValueError("not a duration; write e.g. 90s, 30m, 12h, 1h30m, or seconds") from None
        if not seconds > 0 or seconds == float("inf"):
            raise ValueError("must be a positive, finite duration")
        return seconds

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("search.space must be a mapping of dotted spec paths to distributions")
        return {k: parse_distribution(val, where=f"search.space.{k}") for k, val in v.items()}

    @field_serializer("space")
    def _dump_space(self, v: dict[str, Distribution]) -> dict[str, Any]:
        return to_yaml(v)


class SchedulerSpec(_Section):
    """Early stopping of trials that fall behind (ASHA over samples seen)."""

    type: Literal["asha", "none"] = Field("asha", description="asha or none")
    axis: Literal["samples_seen", "epoch"] = Field(
        "samples_seen",
        description="what ASHA's rungs count: samples seen, or epochs (the share of the training set seen: the "
        "same axis for arms whose samples differ in size, e.g. squad's batch and sequential prompt formats)",
    )
    grace_period: int | float = Field(
        128, gt=0, description="how far a trial trains before it can be stopped, in `axis` units (samples or epochs)"
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/reduction_factor at each rung")
    brackets: int = Field(1, gt=0, description="ASHA brackets")
