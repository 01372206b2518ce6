"""Forgetting measures behind one small interface, looked up by name: what a trial forgot, against the base model.

``probe`` (loss on held-out general text), ``mc`` (multiple-choice benchmarks, scored as lm-evaluation-harness
scores them), ``kl`` (forward KL to the base model's next-token distributions), ``judge`` (chat answers rated by
a judge model, MT-Bench style); ``forgetting.primary`` names the
one whose metric drives the budget, the penalty and the Pareto front. The base values are cached
(``forgetting.baseline``). Adding a measure is one module with a :class:`Measure` subclass plus its import here.
"""

from forgetting._base import (
    MEASURES,
    Baselines,
    Measure,
    TaskPrompts,
    active_measures,
    check_measures,
    check_primary,
    primary_metric,
    register_measure,
)
from forgetting.baseline import baseline_key, cached_baselines
from forgetting.judge import JudgeBase, JudgeMeasure, JudgeOptions, JudgeUnavailable, judge_answers, parse_rating
from forgetting.kl import KlMeasure, mean_forward_kl
from forgetting.mc import McBase, McMeasure, mc_accuracy
from forgetting.probe import ProbeBase, ProbeMeasure, probe_loss

__all__ = [
    "MEASURES",
    "Baselines",
    "JudgeBase",
    "JudgeMeasure",
    "JudgeOptions",
    "JudgeUnavailable",
    "KlMeasure",
    "McBase",
    "McMeasure",
    "Measure",
    "ProbeBase",
    "ProbeMeasure",
    "TaskPrompts",
    "active_measures",
    "baseline_key",
    "cached_baselines",
    "check_measures",
    "check_primary",
    "judge_answers",
    "mc_accuracy",
    "mean_forward_kl",
    "parse_rating",
    "primary_metric",
    "probe_loss",
    "register_measure",
]
