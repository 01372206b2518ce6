"""The base model's task scores: one per eval arm, cached, matched to each trial; the summary's base row, gains,
``objective.min_gain`` ranking and the words that say when tuning did not help."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gridrun.base_scores import base_task_scores, baseline_entries, parent_base_metrics
from gridrun.report import format_summary, summarize
from gridrun.spec import load_spec, spec_from_dict
from gridrun.spec.space import to_optuna
from tests.conftest import ROOT, TINY
from trainables.base_scores import arm_key, base_for, gain_metrics

SQUAD = ROOT / "search_spaces" / "tiny" / "squad.yaml"


def _squad(tmp_path: Path, *extra: str):
    spec = load_spec(SQUAD, [*TINY, f"tracking.storage={tmp_path}/results", *extra])
    searched, fixed = to_optuna(spec.search.space)
    return spec, spec.with_params(fixed), searched


def test_one_base_per_searched_eval_value_cached_and_matched_to_each_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path / "cache"))
    _, trial_spec, searched = _squad(tmp_path)
    calls: list[str] = []

    def compute(s):  # stands in for the model: the score tells which prompt format it was given
        calls.append(s.data.options["prompt_format"])
        return {"task/f1": 0.25 if s.data.options["prompt_format"] == "batch" else 0.5}

    arms = base_task_scores(trial_spec, searched, compute)
    assert sorted(calls) == ["batch", "sequential"]  # lr and lora.r do not change the eval: 2 arms, not 8
    assert [a.cached for a in arms] == [False, False]
    again = base_task_scores(trial_spec, searched, compute)
    assert len(calls) == 2 and [a.cached for a in again] == [True, True]  # 0 recomputations on a second launch
    assert [a.scores for a in again] == [a.scores for a in arms]

    baseline = {"probe_loss": 3.0, **baseline_entries(arms)}
    for fmt, base in (("batch", 0.25), ("sequential", 0.5)):
        # a trial's own spec (any lr and rank) finds the base of its own prompt format
        trial = trial_spec.with_params({"data.options.prompt_format": fmt, "train.lr": 5e-3, "lora.r": 8})
        assert base_for(trial, baseline) == {"task/f1": base}
        assert gain_metrics({"task/f1": 0.75}, base_for(trial, baseline)) == {
            "task/f1_base": base,
            "task/f1_gain": 0.75 - base,
        }
    assert parent_base_metrics(arms) == {"task/f1_base/batch": 0.25, "task/f1_base/sequential": 0.5}

    # another eval set is another arm: scored anew, not served from the cache
    _, other, _ = _squad(tmp_path, "data.eval_size=5")
    assert arm_key(other) != arm_key(trial_spec)
    base_task_scores(other, searched, compute)
    assert len(calls) == 4


def _result(tid: str, task: float, base: float, objective: float, fmt: str) -> SimpleNamespace:
    metrics = {
        "trial_id": tid,
        "progress": 1,
        "task/f1": task,
        "task/f1_base": base,
        "task/em": task / 2,
        "task/em_base": base / 2,
        "forget/delta": 0.0,
        "objective": objective,
        "samples_seen": 8,
    }
    config = {"data.options.prompt_format": fmt, "train.lr": 1e-3}
    return SimpleNamespace(metrics=metrics, path=f"/x/{tid}", error=None, config=config, checkpoint=None)


def test_summary_has_a_base_row_per_arm_gains_and_says_when_no_trial_beat_base() -> None:
    spec = spec_from_dict({"name": "t", "objective": {"metric": "task/f1"}})
    grid = [_result("a", 0.2, 0.3, 0.2, "batch"), _result("b", 0.4, 0.5, 0.1, "sequential")]
    s = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    a = next(r for r in s["trials"] if r["trial_id"] == "a")
    assert a["base"] == 0.3 and a["gain"] == pytest.approx(-0.1)
    table = format_summary(s)
    lines = table.splitlines()
    base_lines = [ln for ln in lines if ln.startswith("base ")]
    assert len(base_lines) == 2 and any("batch" in ln and "0.3" in ln for ln in base_lines)
    assert any("sequential" in ln and "0.5" in ln for ln in base_lines)
    assert "NO trial beat the base model on task/f1" in table
    assert "best trial vs base: task/em 0.1 (base 0.15, gain -0.05), task/f1 0.2 (base 0.3, gain -0.1)" in table


def test_best_by_objective_below_base_is_said_and_min_gain_ranks_beaters_first() -> None:
    grid = [_result("a", 0.2, 0.3, 0.9, "batch"), _result("b", 0.6, 0.5, 0.5, "sequential")]
    spec = spec_from_dict({"name": "t", "objective": {"metric": "task/f1"}})
    s = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    assert s["best"]["trial_id"] == "a"  # the higher objective wins without min_gain...
    assert "the best trial by objective scores BELOW the base model on task/f1: 0.2 vs base 0.3" in format_summary(s)

    spec = spec_from_dict({"name": "t", "objective": {"metric": "task/f1", "min_gain": 0.05}})
    s = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    assert s["best"]["trial_id"] == "b"  # ...but only b beats its base by 0.05
    assert [r["trial_id"] for r in s["trials"]] == ["b", "a"]
    assert "BELOW" not in format_summary(s)

    spec = spec_from_dict({"name": "t", "objective": {"metric": "task/f1", "min_gain": 0.2}})
    s = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    assert s["best"]["trial_id"] == "a"  # nobody meets it: the objective decides among them
    assert "no trial beat the base model by objective.min_gain 0.2 on task/f1" in format_summary(s)


def test_min_gain_must_not_be_negative() -> None:
    from gridrun.errors import GridrunError

    with pytest.raises(GridrunError, match="min_gain"):
        spec_from_dict({"name": "t", "objective": {"min_gain": -1}})


def test_study_tables_per_arm_and_per_metric_and_written_to_report(tmp_path: Path) -> None:
    from gridrun.report.study import study_tables, write_study

    spec, _, _ = _squad(tmp_path)
    grid = [
        _result("a", 0.2, 0.3, 0.9, "batch"),
        _result("b", 0.6, 0.5, 0.5, "sequential"),
        _result("c", 0.1, 0.5, 0.05, "sequential"),
    ]
    s = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    s["study"] = text = study_tables(s, spec.search.space)
    lines = text.splitlines()
    # per prompt format: its base and its best trial (b, not c, for sequential), every metric
    assert "| metric | batch: base | batch: best (a) | sequential: base | sequential: best (b) |" in lines
    assert "| task/f1 | 0.3 | 0.2 | 0.5 | 0.6 |" in lines
    assert "| task/em | 0.15 | 0.1 | 0.25 | 0.3 |" in lines
    # the best trial against its base, one row per metric
    assert "### Best trial a vs base model, every task metric" in lines
    assert "| task/f1 | 0.3 | 0.2 | -0.1 |" in lines
    assert text in format_summary(s)  # printed by launch and `gridrun report`
    paths = write_study(s, tmp_path / "report")
    assert [p.name for p in paths] == ["study.md", "study.png"]
    assert paths[0].read_text() == text + "\n" and paths[1].stat().st_size > 0


def test_an_arm_no_trial_ran_still_shows_its_base() -> None:
    from gridrun.report.study import study_tables

    spec, _, _ = _squad(Path("/nonexistent"))
    s = summarize(spec, [_result("a", 0.2, 0.3, 0.9, "batch")], {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)
    s["base_scores"] = [  # what launch records: every arm's base scores
        {"values": {"data.options.prompt_format": "batch"}, "scores": {"task/f1": 0.3, "task/em": 0.15}},
        {"values": {"data.options.prompt_format": "sequential"}, "scores": {"task/f1": 0.5, "task/em": 0.25}},
    ]
    s["study"] = study_tables(s, spec.search.space)
    assert "| task/f1 | 0.3 | 0.2 | 0.5 | - |" in s["study"].splitlines()
    assert "sequential: best (no trial)" in s["study"]
    base_lines = [ln.split() for ln in format_summary(s).splitlines() if ln.startswith("base ")]
    assert [(b[2], b[3]) for b in base_lines] == [("batch", "0.3"), ("sequential", "0.5")]


def test_each_completion_is_scored_alone_and_the_scores_average_to_the_evaluators() -> None:
    from evaluators import GenerationSettings, build_evaluator
    from trainables.base_scores import example_scores

    squad = build_evaluator("squad", GenerationSettings())
    examples = [{"prompt": "q1", "answer": "the Eiffel Tower"}, {"prompt": "q2", "answer": "1889"}]
    completions = ["Eiffel Tower", "1889 or so"]
    per = example_scores([squad], completions, examples)
    assert (per[0]["em"], per[1]["em"]) == (1.0, 0.0)  # SQuAD normalization drops "the"
    assert per[1]["f1"] == pytest.approx(0.5)  # 1 of 3 predicted tokens, 1 of 1 gold: 2 * (1/3) / (4/3)
    whole = squad.score(completions, examples)
    for k in ("em", "f1", "lenient"):
        assert sum(p[k] for p in per) / len(per) == pytest.approx(whole[k])
    assert example_scores([build_evaluator("answer_loss", GenerationSettings())], completions, examples) == [{}, {}]


def test_a_searched_range_that_changes_the_eval_rows_makes_no_arm(tmp_path: Path) -> None:
    from gridrun.base_scores import eval_arms

    spec = load_spec(ROOT / "search_spaces" / "tiny" / "json_format.yaml", TINY)
    searched, fixed = to_optuna(spec.search.space)
    trial_spec = spec.with_params(fixed)
    # json's hard-negative rate shapes the eval rows too, over a range: no base can be scored per value
    # beforehand, so each trial scores its own at step 0 (tests/trainables_tests/test_base_identity.py)
    assert eval_arms(trial_spec, searched) == []
    # lr never changes the eval; squad's prompt format does, with two values: two arms
    _, squad, searched = _squad(tmp_path)
    assert sorted(v["data.options.prompt_format"] for v, _ in eval_arms(squad, searched)) == ["batch", "sequential"]
