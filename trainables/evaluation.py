"""A trial's evaluation: the prompts, evaluators and forgetting measures set up once per trial (``setup_eval``),
and ``eval_round``, the one evaluation both trials and ``evaluate_adapter`` run (task metrics, forgetting against
the base, the objective), so a logged adapter re-scores to what its trial reported."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from forgetting import Baselines, Measure, active_measures, primary_metric
from gridrun.errors import GridrunError
from gridrun.metrics import penalized
from gridrun.spec import ExperimentSpec
from trainables.base_scores import base_for, gain_metrics, score_task
from trainables.data import render_prompt
from trainables.precision import autocast
from trainables.tokenized import eval_records

__all__ = ["EvalContext", "eval_round", "setup_eval", "setup_task_eval"]


@dataclass
class EvalContext:
    """What every eval round of one trial reuses: prompts, evaluators, forgetting measures (their data loaded)
    and the base model's values for them."""

    examples: list[dict[str, Any]]
    evaluators: list[Any]
    measures: list[Measure]
    baselines: Baselines
    generator: Any = None  # the evaluators' and measures' ``evaluators.Generator`` (evaluate.backend)


def setup_task_eval(spec: ExperimentSpec, tok: Any, generator: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Evaluation prompts in the training template and the spec's evaluators (trials and the base model's score),
    generating with ``generator`` (the caller's, who closes it; told of the prompts here)."""
    from evaluators import GenerationSettings, build_evaluator

    eval_rows = eval_records(spec.data, tok, spec.train.seed)
    examples = [{**r, "prompt": render_prompt(tok, r["prompt"], spec.data.template)} for r in eval_rows]
    ev = spec.evaluate
    # the engine a backend starts once (vLLM) is sized for the longest prompt it will be asked for
    generator.reserve(tok, [e["prompt"] for e in examples], ev.max_new_tokens)
    gen = GenerationSettings(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    return examples, [build_evaluator(n, gen, ev.options.get(n), generator) for n in ev.evaluators]


def setup_eval(spec: ExperimentSpec, tok: Any, baselines: Baselines) -> EvalContext:
    """Evaluation prompts in the training template, the spec's evaluators and forgetting measures (each with
    its base value from ``baselines``: a measure without one is one line, before any training), all generating
    with one generator built here, once per trial."""
    from evaluators import build_generator

    generator = build_generator(spec)
    try:
        examples, evaluators = setup_task_eval(spec, tok, generator)  # the measures that generate (judge) reserve
        measures = active_measures(spec)
        for m in measures:
            if m.Base is not None:
                baselines.of(m.name)
            m.generator = generator
            m.setup(tok, [e["prompt"] for e in examples])
    except BaseException:  # no context reaches the caller to close it
        generator.close()
        raise
    # a copy: a trial adds its step-0 task base to it, and the caller's record (shared in-process) stays as it was
    return EvalContext(examples, evaluators, measures, replace(baselines, task=dict(baselines.task)), generator)


def eval_round(spec: ExperimentSpec, model: Any, tok: Any, ctx: EvalContext) -> dict[str, float]:
    """One evaluation: ``task/*`` (plus ``task/weighted``), ``forget/*`` against the base, and ``objective``.

    Every forward runs on the model as the trial's generator runs it for inference (the same numbers: on CPU the
    HF backend's dequantized twins of the 4-bit layers)."""

    def view() -> Any:
        return ctx.generator.inference(model) if ctx.generator is not None else nullcontext()

    # eval mode once for the round: transformers re-kernelizes a model at every train/eval switch (a walk over every
    # module), and generation and each scoring pass would otherwise switch there and back; the inference view (the
    # generator's twins) is entered once for all that runs on it, and left for the measures that switch the adapter
    was_training = model.training
    model.eval()
    scores: dict[int, dict[str, float]] = {}
    try:
        with view():
            task = score_task(spec, model, tok, ctx.examples, ctx.evaluators)
            for i, m in enumerate(ctx.measures):
                if not m.switches_adapter:
                    with autocast(spec, model):
                        scores[i] = m.score(model, tok, ctx.baselines.values.get(m.name))
        for i, m in enumerate(ctx.measures):
            if m.switches_adapter:
                with autocast(spec, model):
                    scores[i] = m.score(model, tok, ctx.baselines.values.get(m.name))
    finally:
        model.train(was_training)
    forget: dict[str, float] = {}
    for i in range(len(ctx.measures)):  # in the measures' order, as before
        forget.update(scores[i])
    metric = task.get(spec.objective.metric)
    if metric is None:
        raise GridrunError(
            f"objective.metric: {spec.objective.metric} is not reported by "
            f"evaluators {spec.evaluate.evaluators} (they report: {', '.join(sorted(task))})"
        )
    forgot = forget.get(primary_metric(spec))
    if forgot is None:  # the primary measure failed this round (a judge that is down): no honest objective
        objective = math.nan
    else:
        objective = penalized(metric, forgot, spec.objective.penalty, spec.objective.direction)
    return {**task, **gain_metrics(task, base_for(spec, ctx.baselines.task)), **forget, "objective": objective}
