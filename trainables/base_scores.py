"""The base model's task scores, trial side: which eval a spec runs (its *arm*), scoring it, and the
``task/<metric>_base`` / ``task/<metric>_gain`` metrics a trial reports next to its own scores.

The driver scores the base model once per arm before the trials start (``gridrun.base_scores``) and hands the
scores to every trial inside its baseline dict, as ``task_base/<arm label>/<metric>`` entries (the label: the
arm's searched values as JSON); each trial finds its own arm from its own spec's values, reading no data.
Pure functions except ``score_task`` (runs the evaluators on a model).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from gridrun.spec import ExperimentSpec
from trainables.precision import autocast

__all__ = [
    "BASE_PREFIX",
    "arm_key",
    "arm_label",
    "base_entries",
    "base_for",
    "eval_paths",
    "example_scores",
    "gain_metrics",
    "score_task",
    "step0_base",
    "timing_metrics",
]

#: Prefix of the base scores inside a trial's baseline dict: ``task_base/<arm label>/<task metric>``.
BASE_PREFIX = "task_base/"

#: Dotted paths that never change what the eval measures on the base model: which training rows a trial sees.
_TRAIN_ONLY = ("data.sample_ratio",)


def eval_paths(searched: list[str]) -> list[str]:
    """The searched dotted paths that may change the eval (``arm_key`` tells whether a value really does)."""
    heads = ("model.", "data.", "evaluate.", "objective.weights")
    return [p for p in searched if (p.startswith(heads) or p == "train.seed") and p not in _TRAIN_ONLY]


@functools.lru_cache(maxsize=64)
def _arm_key(spec_json: str) -> str:
    from trainables.data import load_task_data

    spec = ExperimentSpec.model_validate_json(spec_json)
    _, rows = load_task_data(spec.data, spec.train.seed)
    d = spec.model_dump(mode="json")
    parts = {
        "model": d["model"],
        "template": d["data"]["template"],
        "rows": hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest(),
        "evaluate": d["evaluate"],
        "weights": d["objective"]["weights"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def arm_key(spec: ExperimentSpec) -> str:
    """A short hash of what the base model's task scores depend on: the model, the eval rows' content (so a
    data option that shapes only the training rows, such as a hard-negative rate, changes nothing), the
    template, the evaluator and generation settings. LoRA settings are left out: a fresh adapter has B = 0, so
    it computes the prepared base model's function whatever its rank or targets. Memoized: every eval round
    asks."""
    return _arm_key(spec.model_dump_json())


def arm_label(values: dict[str, Any]) -> str:
    """How an arm is named in a trial's baseline entries: its searched values (dotted path → value) as JSON."""
    return json.dumps(values, sort_keys=True, default=str)


def base_entries(values: dict[str, Any], scores: dict[str, float]) -> dict[str, float]:
    """``scores`` (``task/<metric>`` → value) as baseline entries for the arm selected by ``values``."""
    return {f"{BASE_PREFIX}{arm_label(values)}/{k}": float(v) for k, v in scores.items()}


def _value(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def base_for(spec: ExperimentSpec, baseline: dict[str, float]) -> dict[str, float]:
    """The base model's ``task/<metric>`` scores for the eval ``spec`` runs: those of the arm whose searched values
    ``spec`` has (empty when the driver passed none for it, e.g. a continuous searched value that changes the
    eval). Matched by values, not by the eval rows' content, so a trial never reads its data source for it."""
    arms: dict[str, dict[str, float]] = {}
    for k, v in baseline.items():
        if k.startswith(BASE_PREFIX):
            label, _, metric = k[len(BASE_PREFIX) :].rpartition("/task/")
            arms.setdefault(label, {})[f"task/{metric}"] = v
    here = spec.model_dump(mode="json")
    for label, scores in arms.items():
        values = json.loads(label)
        if all(_value(here, p) == json.loads(json.dumps(v, default=str)) for p, v in values.items()):
            return scores
    return {}


def gain_metrics(task: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """``task/<m>_base`` and ``task/<m>_gain`` (trial − base) for each task metric the base was scored on."""
    out: dict[str, float] = {}
    for k, v in task.items():
        if k in base:
            out[f"{k}_base"] = base[k]
            out[f"{k}_gain"] = v - base[k]
    return out


def timing_metrics(evaluators: list[Any]) -> set[str]:
    """The ``task/*`` names that measure time (latency), which no two runs reproduce exactly."""
    return {f"task/{m}" for ev in evaluators for m in getattr(ev, "timing_metrics", ())}


def step0_base(spec: ExperimentSpec, model: Any, tok: Any, ctx: Any) -> dict[str, float]:
    """Baseline-dict entries of the base scores for a trial whose eval the driver could not score beforehand (a
    searched range that changes the eval rows): scored here on the model as the trial starts (fresh adapter,
    B = 0), so call it before any step or restore; empty when the driver passed them (``ctx``: the trial's
    ``EvalContext``)."""
    if base_for(spec, ctx.baselines.task):
        return {}
    return base_entries({}, score_task(spec, model, tok, ctx.examples, ctx.evaluators))  # matches this trial


def example_scores(
    evaluators: list[Any], completions: list[str], examples: list[dict[str, Any]]
) -> list[dict[str, float]]:
    """Each completion's own score (``gridrun compare``): every evaluator that scores text (``score``) run on that
    one example, its declared metrics only; loss-based evaluators (answer_loss) score no completion."""
    out = []
    for text, ex in zip(completions, examples, strict=True):
        scores: dict[str, float] = {}
        for ev in evaluators:
            if hasattr(ev, "score"):
                got = ev.score([text], [ex])
                scores.update({k: float(v) for k, v in got.items() if k in ev.metrics})
        out.append(scores)
    return out


def score_task(
    spec: ExperimentSpec, model: Any, tok: Any, examples: list[dict[str, Any]], evaluators: list[Any]
) -> dict[str, float]:
    """``task/*`` scores of ``model`` by each evaluator (plus ``task/weighted`` when objective weights are set):
    the one scoring both a trial's eval round and the base model's score run."""
    task: dict[str, float] = {}
    for ev in evaluators:
        with autocast(spec, model):  # generation and scoring in the trial's compute dtype
            task.update({f"task/{k}": float(v) for k, v in ev.evaluate(model, tok, examples).items()})
    weights = spec.objective.weights
    if weights:
        task["task/weighted"] = sum(w * task.get(k, 0.0) for k, w in weights.items())
    return task
