"""Evaluator behaviour, plus one conformance test every registered evaluator must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import EVALUATORS, GenerationSettings, build_evaluator
from evaluators.json_format import JsonFormatEvaluator, classify, count_json_objects
from gridrun.errors import GridrunError


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"a": 1}', "ok"),
        ('  {"a": 1}\n', "ok"),
        ('Sure! {"a": 1}', "extra_text"),
        ('{"a": 1} {"a": 1}', "extra_text"),
        ('{"a": 1}\nI hope this helps.', "extra_text"),
        ('{"a": 1', "invalid_json"),
        ("[1, 2]", "not_object"),
        ("", "empty"),
        ('```json\n{"a": 1}\n```', "extra_text"),
    ],
)
def test_classify_strict(text: str, kind: str) -> None:
    assert classify(text, "strict")[0] == kind


def test_lenient_accepts_one_fenced_object() -> None:
    assert classify('```json\n{"a": 1}\n```', "lenient")[0] == "ok"
    assert classify('```json\n{"a": 1} {"a": 1}\n```', "lenient")[0] == "extra_text"


def test_count_json_objects() -> None:
    assert count_json_objects('{"a": 1} and {"b": {"c": 2}}') == 2
    assert count_json_objects("no json {here") == 0


def test_score_counts_failure_kinds_and_schema() -> None:
    ev = JsonFormatEvaluator()
    examples = [{"answer": '{"name": "Ana", "age": 3}', "keys": ["name", "age"]}] * 4
    out = ev.score(['{"name": "Ana", "age": 3}', '{"age": 4, "name": "Ana"}', '{"x": 1} {"x": 1}', "hello"], examples)
    assert out["format_success"] == 0.5
    assert out["schema_match"] == 0.5
    assert out["exact_match"] == 0.25
    assert out["duplicate_json_rate"] == 0.25
    assert out["fail_extra_text"] == 0.25 and out["fail_invalid_json"] == 0.25


def test_unknown_evaluator_and_option() -> None:
    with pytest.raises(GridrunError, match="unknown evaluator 'nope'; known: json_format"):
        build_evaluator("nope", GenerationSettings())
    with pytest.raises(GridrunError, match=r"evaluate\.options\.json_format"):
        build_evaluator("json_format", GenerationSettings(), {"strictnes": "strict"})


class _Garbage:
    """A 'model' whose generate returns random token ids: what an evaluator must survive."""

    def __init__(self, model) -> None:
        self.model = model


@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_conformance(name: str, tiny_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainables.data import load_task_data, render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    data = {
        "task": "builtin:json-format",
        "eval": None,
        "split": "train",
        "eval_split": "test",
        "prompt_field": "prompt",
        "answer_field": "answer",
        "train_size": 8,
        "eval_size": 6,
        "options": {},
    }
    _, rows = load_task_data(data, seed=0)
    examples = [{**r, "prompt": render_prompt(tok, r["prompt"], "chat")} for r in rows]
    ev = build_evaluator(name, GenerationSettings(max_new_tokens=12, batch_size=4))
    first = ev.evaluate(model, tok, examples)
    # documented keys, all finite floats
    assert set(first) == set(EVALUATORS[name].metrics)
    assert all(isinstance(v, float) and v == v for v in first.values())
    # deterministic
    assert ev.evaluate(model, tok, examples) == first
    # garbage weights: still a result, never an exception
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    garbage = ev.evaluate(model, tok, examples)
    assert set(garbage) == set(first)
    # empty predictions (scored directly where the evaluator exposes score)
    if hasattr(ev, "score"):
        empty = ev.score([""] * len(examples), examples)
        assert set(empty) == set(first)
