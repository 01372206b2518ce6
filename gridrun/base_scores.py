"""The base model's task scores, driver side: scored once per arm before the trials start, and cached.

An *arm* is one eval a trial can run (``trainables.base_scores.arm_key``): one per experiment, or one per value
of each searched categorical that changes the eval (squad's ``data.options.prompt_format``). A miss is scored
on the model a trial starts from (k-bit preparation and a fresh adapter with B = 0, as the probe baseline is),
as one Ray task with one trial's resources; the scores are kept in the ``base_scores`` cache table, keyed by the
arm and by fingerprints of local model and data files, so a second launch recomputes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgetting.baseline import fingerprint as _fingerprint
from gridrun.cache import cache_get, cache_put
from trainables.base_scores import arm_key, base_entries, eval_paths

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = [
    "Arm",
    "base_cache_key",
    "base_task_scores",
    "baseline_entries",
    "compute_base_scores",
    "eval_arms",
    "log_parent_base",
    "parent_base_metrics",
]

log = logging.getLogger("gridrun")

_VERSION = 1
TABLE = "base_scores"


@dataclass
class Arm:
    """One eval the trials can run: the searched values that select it, its spec and its base scores."""

    values: dict[str, Any]
    spec: ExperimentSpec
    key: str
    scores: dict[str, float]
    cached: bool


def eval_arms(trial_spec: ExperimentSpec, searched: dict[str, Any]) -> list[tuple[dict[str, Any], ExperimentSpec]]:
    """``(values, spec)`` for every combination of the searched categoricals that change the eval; one arm of
    no values when none does. Whether a value changes the eval is tried, not guessed: its choices (or a range's
    ends) give different ``arm_key`` s. With a range that changes the eval, no arm: every trial then scores its
    own base before its first step (``trainables.base_scores.step0_base``)."""
    here = arm_key(trial_spec)
    cats = []
    for p in eval_paths(sorted(searched)):
        d = searched[p]
        tries = list(d.choices) if hasattr(d, "choices") else [d.low, d.high]
        if all(arm_key(trial_spec.with_params({p: v})) == here for v in tries):
            continue  # e.g. a data option that shapes only the training rows
        if not hasattr(d, "choices"):
            log.warning("%s is searched over a range and changes the eval rows: each trial scores its base", p)
            return []  # trials score their own base at step 0 (trainables.base_scores.step0_base)
        cats.append(p)
    arms = []  # every combination (two that give the same eval share one cached score: computed once)
    for combo in itertools.product(*(list(searched[p].choices) for p in cats)):
        values = dict(zip(cats, combo, strict=True))
        arms.append((values, trial_spec.with_params(values) if values else trial_spec))
    return arms


def base_cache_key(spec: ExperimentSpec) -> str:
    """The cache key of ``spec``'s base scores: its arm, plus the content of local model and data files."""
    parts = {
        "v": _VERSION,
        "arm": arm_key(spec),
        "model": _fingerprint(spec.model.name),
        "data": [_fingerprint(spec.data.task), _fingerprint(spec.data.eval) if spec.data.eval else None],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def compute_base_scores(spec: ExperimentSpec) -> dict[str, float]:
    """``task/*`` scores of the model a trial starts from, by the spec's evaluators on its eval set (runs where
    the trials run)."""
    import torch

    from evaluators import build_generator
    from trainables.base_scores import score_task
    from trainables.evaluation import setup_task_eval
    from trainables.model import quiet_hf
    from trainables.qlora_sft import setup_model

    quiet_hf()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    model, tok, _ = setup_model(spec)
    generator = build_generator(spec)  # closed here: a vLLM engine's GPU memory goes back before the trials start
    try:
        examples, evaluators = setup_task_eval(spec, tok, generator)
        return score_task(spec, model, tok, examples, evaluators)
    finally:
        generator.close()


def base_task_scores(
    trial_spec: ExperimentSpec,
    searched: dict[str, Any],
    compute: Callable[[ExperimentSpec], dict[str, float]] = compute_base_scores,
) -> list[Arm]:
    """The base scores of every arm, from the cache or ``compute`` (called only on a miss, once per arm)."""
    arms = []
    for values, spec in eval_arms(trial_spec, searched):
        key = base_cache_key(spec)
        hit = cache_get(TABLE, key)
        if hit is not None:
            arms.append(Arm(values, spec, arm_key(spec), hit["value"], True))
            continue
        scores = {k: float(v) for k, v in compute(spec).items()}
        cache_put(TABLE, key, {"value": scores, "model": spec.model.name, "task": spec.data.task, "values": values})
        arms.append(Arm(values, spec, arm_key(spec), scores, False))
    return arms


def baseline_entries(arms: list[Arm]) -> dict[str, float]:
    """What goes into the trials' baseline dict so each trial finds its own arm's base scores."""
    out: dict[str, float] = {}
    for a in arms:
        out.update(base_entries(a.values, a.scores))
    return out


def _arm_label(values: dict[str, Any]) -> str:
    return "_".join(str(v) for v in values.values())


def parent_base_metrics(arms: list[Arm]) -> dict[str, float]:
    """The parent run's ``task/<metric>_base`` (one arm), or ``task/<metric>_base/<value>`` per arm."""
    out: dict[str, float] = {}
    for a in arms:
        suffix = f"/{_arm_label(a.values)}" if len(arms) > 1 else ""
        out.update({f"{k}_base{suffix}": v for k, v in a.scores.items()})
    return out


def log_parent_base(uri: str, parent_run_id: str, arms: list[Arm]) -> None:
    """Log the base scores on the parent run (the children get theirs with every eval round)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in parent_base_metrics(arms).items()]
    if metrics:
        MlflowClient(uri).log_batch(parent_run_id, metrics=metrics)
