"""An untrained adapter scores exactly its base: the base model's task scores (``gridrun.base_scores``) equal a
trial's eval round before any step, for every evaluator (latency aside), and its gains are 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetting import Baselines
from forgetting._base import TASK_KEY
from gridrun.base_scores import compute_base_scores
from gridrun.spec import load_spec
from tests.conftest import ROOT, TINY
from trainables.base_scores import base_entries, step0_base, timing_metrics
from trainables.evaluation import eval_round, setup_eval
from trainables.qlora_sft import setup_model

STUDIES = {  # one tiny study per evaluator
    "squad": "squad.yaml",
    "code_exec": "code.yaml",
    "gsm8k": "gsm8k.yaml",
    "json_format": "json_format.yaml",
    "answer_loss": "forgetting.yaml",
}


@pytest.mark.parametrize("evaluator", sorted(STUDIES))
def test_an_untrained_adapter_scores_exactly_its_base(evaluator: str, tmp_path: Path, tiny_model_path: Path) -> None:
    spec = load_spec(
        ROOT / "search_spaces" / "tiny" / STUDIES[evaluator], [*TINY, "data.eval_size=4", "forgetting.mc=[]"]
    )
    assert spec.evaluate.evaluators == [evaluator]
    base = compute_base_scores(spec)

    model, tok, _ = setup_model(spec)  # as a trial starts: prepared model, fresh adapter, training mode
    model.train()
    ctx = setup_eval(spec, tok, Baselines.from_json({"probe": {"loss": 1.0}, TASK_KEY: base_entries({}, base)}))
    scores = eval_round(spec, model, tok, ctx)

    timing = timing_metrics(ctx.evaluators)
    task = {k: v for k, v in scores.items() if k.startswith("task/") and not k.endswith(("_base", "_gain"))}
    assert set(task) == set(base) and len(base) >= 2
    assert {k: v for k, v in task.items() if k not in timing} == {k: v for k, v in base.items() if k not in timing}
    for k in base:
        assert scores[f"{k}_base"] == base[k]
        if k not in timing:
            assert scores[f"{k}_gain"] == 0.0


def test_a_trial_without_a_driver_base_scores_its_own_at_step_0(tiny_model_path: Path) -> None:
    spec = load_spec(ROOT / "search_spaces" / "tiny" / "json_format.yaml", [*TINY, "data.eval_size=4"])
    model, tok, _ = setup_model(spec)
    ctx = setup_eval(
        spec, tok, Baselines.from_json({"probe": {"loss": 1.0}})
    )  # no task base: a searched range changed the eval
    entries = step0_base(spec, model, tok, ctx)
    assert entries == base_entries({}, compute_base_scores(spec))
    ctx.baselines.task.update(entries)
    assert step0_base(spec, model, tok, ctx) == {}  # passed (or scored) once: never again
    scores = eval_round(spec, model, tok, ctx)
    assert scores["task/format_success_gain"] == 0.0
