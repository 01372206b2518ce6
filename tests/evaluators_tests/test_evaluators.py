"""Evaluator behaviour, plus one conformance test every registered evaluator must pass."""

from __future__ import annotations

import re
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
        ('{"a": NaN}', "invalid_json"),  # Python's json reads NaN; strict JSON does not
        ('{"a": {"b": 1}, "c": ', "invalid_json"),  # broke off: the nested object inside is no rescue
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


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('```JSON\n{"a": 1}\n```', "ok"),  # the info string in any case
        ('~~~json\n{"a": 1}\n~~~', "ok"),  # tildes fence too
        ('````\n{"a": 1}\n`````', "ok"),  # closed by a fence at least as long
        ('```json\n{"a": 1}```', "ok"),  # closing fence glued to the last line
        ('```{"a": 1}```', "ok"),  # all on one line
        ('```json\n{"a": 1}', "ok"),  # unclosed: the block runs to the end (CommonMark)
        ('```python\n{"a": 1}\n```', "extra_text"),  # a fence for another language is no JSON answer
        ('```json\n{"a": 1}\n~~~', "extra_text"),  # a tilde line does not close a backtick fence
        ('````json\n{"a": 1}\n```', "extra_text"),  # nor a shorter one
        ('```json\n{"a": 1}\n```\nHope it helps', "extra_text"),
        ('Here:\n```json\n{"a": 1}\n```', "extra_text"),
        ("```json\n[1, 2]\n```", "not_object"),
    ],
)
def test_lenient_fence_forms(text: str, kind: str) -> None:
    assert classify(text, "lenient")[0] == kind


def test_count_json_objects() -> None:
    assert count_json_objects('{"a": 1} and {"b": {"c": 2}}') == 2
    assert count_json_objects("no json {here") == 0
    assert count_json_objects('[{"a": 1}, {"a": 1}]') == 0  # one top-level array, no top-level objects
    assert count_json_objects('[{"a": 1}, {"b": 2}] {"a": 1}') == 1
    assert count_json_objects('[{"a": 1}, {"a": 1}, {"a": 1') == 0  # an array cut off by max_new_tokens


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
    with pytest.raises(
        GridrunError, match="unknown evaluator 'nope'; known: answer_loss, code_exec, gsm8k, json_format, squad"
    ):
        build_evaluator("nope", GenerationSettings())
    with pytest.raises(GridrunError, match=r"evaluate\.options\.json_format"):
        build_evaluator("json_format", GenerationSettings(), {"strictnes": "strict"})


#: The builtin task whose examples each evaluator scores.
TASK_FOR = {
    "json_format": "builtin:json-format",
    "squad": "builtin:squad",
    "gsm8k": "builtin:gsm8k",
    "code_exec": "builtin:algo",
    "answer_loss": "builtin:gsm8k",
}


@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_conformance(name: str, tiny_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gridrun.spec import DataSpec
    from trainables.data import load_task_data, render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    _, rows = load_task_data(DataSpec(task=TASK_FOR[name], train_size=8, eval_size=6), seed=0)
    examples = [{**r, "prompt": render_prompt(tok, r["prompt"], "chat")} for r in rows]
    ev = build_evaluator(name, GenerationSettings(max_new_tokens=12, batch_size=4))
    first = ev.evaluate(model, tok, examples)
    # documented keys (fixed ones always, pattern ones only as declared), all finite floats
    cls = EVALUATORS[name]
    assert set(cls.metrics) <= set(first)
    extra = set(first) - set(cls.metrics)
    assert all(any(re.fullmatch(p, k) for p in cls.metric_patterns) for k in extra), extra
    assert all(isinstance(v, float) and v == v for v in first.values())
    # deterministic (wall-clock measurements aside)
    again = ev.evaluate(model, tok, examples)
    timing = set(cls.timing_metrics)
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in first.items() if k not in timing}
    # garbage weights: still a result, never an exception
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    garbage = ev.evaluate(model, tok, examples)
    assert set(garbage) == set(first)
    # empty predictions (scored directly where the evaluator exposes score)
    if hasattr(ev, "score"):
        empty = ev.score([""] * len(examples), examples)
        assert empty and all(k in cls.metrics or any(re.fullmatch(p, k) for p in cls.metric_patterns) for k in empty)
        assert all(v == v for v in empty.values())
