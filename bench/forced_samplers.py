"""Samplers the levers bench forces in place of gridrun's TPE, and TPE's arguments gridrun fixes.

``gridrun.searcher.build_searcher`` builds ``optuna.samplers.TPESampler(seed=..., n_startup_trials=...,
multivariate=True, constant_liar=True)`` for ``search.sampler: tpe``. A lever such as ``sampler=gp``,
``gp.deterministic_objective=True``, ``tpe.gamma=0.15`` or ``tpe.startup=qmc`` swaps that class, for the
duration of :func:`forcing`, for a stand-in that builds the named sampler with the spec's seed and startup trials,
so a screen can try a sampler before gridrun ships it. ``sampler=oracle`` is the bound: random startup trials,
then the table's best cell every time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

__all__ = ["forcing", "sampler_kwargs"]

#: Lever prefixes that name a sampler or pass it an argument (the rest are spec overrides).
PREFIXES = ("sampler", "tpe", "gp", "cmaes", "oracle")


@contextlib.contextmanager
def forcing(lever: list[str], table: Any) -> Iterator[list[str]]:
    """Within the block, ``build_searcher`` builds the sampler ``lever`` names; yields the lever's spec overrides."""
    import optuna

    name, kwargs = sampler_kwargs(lever)
    if name == "oracle":
        key = max(table, key=lambda k: max(r["objective"] for r in table[k]))
        kwargs["params"] = dict(zip(("train.lr", "lora.r", "data.sample_ratio"), key, strict=True))
    tpe_class = optuna.samplers.TPESampler
    if name != "tpe" or kwargs:
        optuna.samplers.TPESampler = _forced(name, kwargs, tpe_class)  # type: ignore[misc]
    try:
        yield [o for o in lever if o.split("=")[0].split(".")[0] not in PREFIXES]
    finally:
        optuna.samplers.TPESampler = tpe_class  # type: ignore[misc]


def sampler_kwargs(lever: list[str]) -> tuple[str, dict[str, Any]]:
    """The sampler a lever forces (``tpe`` if none) and the arguments it passes it."""
    import yaml

    name, kwargs = "tpe", {}
    for o in lever:
        k, v = o.split("=", 1)
        if k == "sampler":
            name = v
        elif k.split(".")[0] in PREFIXES:
            kwargs[k.split(".", 1)[1]] = yaml.safe_load(v)
    return name, kwargs


def _forced(name: str, kwargs: dict[str, Any], tpe_class: Any) -> Any:
    """A stand-in for ``TPESampler`` that ``gridrun.searcher.build_searcher`` calls with the spec's seed and
    startup trials (and TPE's own multivariate and constant liar, which the other samplers do not take)."""
    import optuna

    def make(seed: int | None = None, n_startup_trials: int = 10, **tpe: Any) -> Any:
        kw = dict(kwargs)
        qmc = kw.pop("startup", None) == "qmc"
        if "gamma" in kw:  # the share of trials TPE counts as good, capped as Optuna's default caps it
            share = float(kw.pop("gamma"))
            kw["gamma"] = lambda n: min(math.ceil(share * n), 25)
        if name == "gp":
            sampler: Any = optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=n_startup_trials, warn_independent_sampling=False, **kw
            )
        elif name == "cmaes":
            sampler = optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=n_startup_trials, warn_independent_sampling=False, **kw
            )
        elif name == "oracle":  # the table's best cell, every trial once the random startup trials are done
            best = optuna.samplers.PartialFixedSampler(kw["params"], optuna.samplers.RandomSampler(seed=seed))
            return _started_by()(optuna.samplers.RandomSampler(seed=seed), best, n_startup_trials)
        else:
            sampler = tpe_class(seed=seed, n_startup_trials=n_startup_trials, **{**tpe, **kw})
        if not qmc:
            return sampler
        # a scrambled Sobol start in place of a random one: neither sampler takes one for its startup trials
        first = optuna.samplers.QMCSampler(
            seed=seed, scramble=True, warn_independent_sampling=False, warn_asynchronous_seeding=False
        )
        return _started_by()(first, sampler, n_startup_trials)

    return make


def _started_by() -> type:
    """``_StartedBy`` as an Optuna sampler (made on first use: the bench imports Optuna lazily)."""
    import optuna

    return type("StartedBy", (_StartedBy, optuna.samplers.BaseSampler), {})


class _StartedBy:
    """TPE whose first ``n`` trials come from another sampler (QMC): Optuna's TPE draws its startup trials at
    random and takes no other; forwarding the sampler interface is all this does."""

    def __init__(self, first: Any, then: Any, n: int) -> None:
        self.first, self.then, self.n = first, then, n

    def _pick(self, study: Any) -> Any:
        from optuna.trial import TrialState

        done = len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True))
        return self.first if done < self.n else self.then

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._pick(study).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, space: Any) -> Any:
        return self._pick(study).sample_relative(study, trial, space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self._pick(study).sample_independent(study, trial, name, dist)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.first.before_trial(study, trial)
        self.then.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.first.after_trial(study, trial, state, values)
        self.then.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.first.reseed_rng()
        self.then.reseed_rng()


@contextlib.contextmanager
def timed_suggests() -> Iterator[list[float]]:
    """Seconds each ``GridrunOptunaSearch.suggest`` takes while the block runs (the driver waits on it before a
    trial starts; a GP refits on every suggest), appended to the list it yields; the method is restored after."""
    import time

    from gridrun.searcher import GridrunOptunaSearch

    suggest, times = GridrunOptunaSearch.suggest, []

    def timed(self: Any, trial_id: str) -> Any:
        t0 = time.perf_counter()
        try:
            return suggest(self, trial_id)
        finally:
            times.append(time.perf_counter() - t0)

    GridrunOptunaSearch.suggest = timed  # type: ignore[method-assign]
    try:
        yield times
    finally:
        GridrunOptunaSearch.suggest = suggest  # type: ignore[method-assign]
