"""Study inputs: answer-format consistency, chat `messages` records, multiple-choice files, option search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridrun.errors import GridrunError
from tests.conftest import ROOT, data_section, run_cli
from trainables.data import load_task_data

GSM8K = ROOT / "search_spaces" / "tiny" / "gsm8k.yaml"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_refuses_a_train_test_answer_format_mismatch(tmp_path: Path) -> None:
    plain = _jsonl(
        tmp_path / "math.jsonl", [{"question": f"What is {i}+1?", "answer": f"It is {i + 1}."} for i in range(20)]
    )
    r = run_cli("validate", str(GSM8K), "--set", f"data.task={plain}", "--set", "data.prompt_field=question")
    assert r.returncode == 2
    assert "gsm8k reads answers written as" in r.stderr and "train/test format mismatch" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    hashed = _jsonl(
        tmp_path / "ok.jsonl",
        [{"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(20)],
    )
    r = run_cli("validate", str(GSM8K), "--set", f"data.task={hashed}", "--set", "data.prompt_field=question")
    assert r.returncode == 0, r.stderr
    r = run_cli("validate", str(GSM8K), "--set", "data.options.answer_format=boxed")
    assert r.returncode == 0, r.stderr  # \\boxed{n} targets are readable by the gsm8k evaluator too


def _data(task: str, **kw):
    return data_section(task, **{"train_size": 16, **kw})


def test_messages_records_become_prompt_turns_and_answer(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Q{i}"},
                {"role": "assistant", "content": f"A{i}"},
            ]
        }
        for i in range(10)
    ]
    train, ev = load_task_data(_data(str(_jsonl(tmp_path / "chat.jsonl", rows)), messages_field="messages"), 0)
    assert len(train) == 8 and len(ev) == 2
    assert train[0]["answer"] == "A0" and [m["role"] for m in train[0]["prompt"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"messages": [{"role": "user", "content": "hi"}]}], "does not end with an assistant message"),
        ([{"msgs": []}], "has no 'messages' list"),
        ([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}], "without role and content"),
    ],
)
def test_bad_messages_records(tmp_path: Path, rows: list[dict], expected: str) -> None:
    with pytest.raises(GridrunError, match=expected):
        load_task_data(_data(str(_jsonl(tmp_path / "c.jsonl", rows * 3)), messages_field="messages"), 0)


def test_chat_template_renders_messages(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainables.data import render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    text = render_prompt(tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "chat")
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(GridrunError, match="need template: chat"):
        render_prompt(tok, [{"role": "user", "content": "U"}], "Q: {prompt}")


def _mc(source: str, benchmark: str = "custom", **kw):
    from forgetting.data import load_mc_sets
    from gridrun.spec import McSpec

    return load_mc_sets([McSpec(benchmark=benchmark, source=source, **kw)])[0]


def test_multiple_choice_items(tmp_path: Path) -> None:
    items = _mc("builtin:general-mc").items
    assert len(items) >= 40 and all(0 <= i["answer"] < len(i["continuations"]) for i in items)
    good = _jsonl(tmp_path / "mc.jsonl", [{"question": "2+2 is", "choices": ["4", "5"], "answer": 0}])
    item = _mc(str(good)).items[0]
    assert item["contexts"] == ["2+2 is"] * 2 and item["continuations"] == [" 4", " 5"] and item["lengths"] == [1, 1]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "x", "choices": ["a"], "answer": 3}])
    with pytest.raises(GridrunError, match="needs question"):
        _mc(str(bad))
    with pytest.raises(GridrunError, match="unknown builtin multiple-choice set"):
        _mc("builtin:nope")


def test_mc_forms_in_the_spec() -> None:
    """Names, sources and mappings all become benchmark entries; duplicates and negative budgets are refused."""
    from gridrun.errors import SpecError
    from gridrun.spec import spec_from_dict

    spec = spec_from_dict({"name": "t", "forgetting": {"mc": ["hellaswag", {"benchmark": "winogrande", "limit": 9}]}})
    assert [(m.benchmark, m.limit) for m in spec.forgetting.mc] == [("hellaswag", 500), ("winogrande", 9)]
    legacy = spec_from_dict({"name": "t", "forgetting": {"mc": "builtin:general-mc"}})
    assert [(m.benchmark, m.source) for m in legacy.forgetting.mc] == [("custom", "builtin:general-mc")]
    with pytest.raises(SpecError, match="hellaswag is listed twice"):
        spec_from_dict({"name": "t", "forgetting": {"mc": ["hellaswag", "hellaswag"]}})
    with pytest.raises(SpecError, match=r"forgetting\.budget: Input should be greater than or equal to 0"):
        spec_from_dict({"name": "t", "forgetting": {"budget": -0.1}})


def test_base_model_knows_the_multiple_choice_facts(tiny_model_path: Path) -> None:
    """The general benchmark measures real ability: the base model is far above chance (25%)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetting.mc import mc_accuracy

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    mc = _mc("builtin:general-mc")
    assert mc_accuracy(model, tok, mc.items, mc.metric) > 0.5


def test_option_values_can_be_searched() -> None:
    from gridrun.spec import load_spec

    spec = load_spec(ROOT / "search_spaces" / "tiny" / "squad.yaml")
    assert "data.options.prompt_format" in spec.search.space
    trial = spec.with_params({"data.options.prompt_format": "sequential"})
    assert trial.data.options["prompt_format"] == "sequential"
    with pytest.raises(GridrunError, match="is not a spec field"):
        load_spec(ROOT / "search_spaces" / "tiny" / "squad.yaml", ["search.space.data.optionz.x=1"])


SQUAD_V11 = {
    "version": "1.1",
    "data": [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": "Ana lives in Rome. Ben has a dog.",
                    "qas": [
                        {
                            "id": "1",
                            "question": "Where does Ana live?",
                            "answers": [{"text": "Rome", "answer_start": 13}],
                        },
                        {
                            "id": "2",
                            "question": "What does Ben have?",
                            "answers": [{"text": "a dog", "answer_start": 27}, {"text": "dog", "answer_start": 29}],
                        },
                    ],
                },
                {
                    "context": "Kira visits on Friday.",
                    "qas": [
                        {
                            "id": "3",
                            "question": "When does Kira visit?",
                            "answers": [{"text": "Friday", "answer_start": 15}],
                        }
                    ],
                },
            ],
        }
    ],
}


@pytest.mark.parametrize(("fmt", "n_examples"), [("batch", 3), ("sequential", 2)])
def test_squad_v11_json_file_in_both_prompt_formats(tmp_path: Path, fmt: str, n_examples: int) -> None:
    from evaluators.squad import SquadEvaluator

    f = tmp_path / "squad.json"
    f.write_text(json.dumps(SQUAD_V11))
    data = _data(
        str(f), adapter="squad", eval=str(f), eval_size=1, options={"prompt_format": fmt, "questions_per_context": 5}
    )
    train, _ = load_task_data(data, 0)
    assert len(train) == n_examples and all(r["format"] == fmt for r in train)
    if fmt == "sequential":
        assert train[0]["answers"] == [["Rome"], ["a dog", "dog"]] and train[0]["answer"] == "1. Rome\n2. a dog"
    # the references themselves score perfectly with the squad evaluator
    assert SquadEvaluator().score([r["answer"] for r in train], train)["em"] == 1.0


def test_squad_hub_layout_and_bad_rows() -> None:
    from trainables.data import squad_records

    rows = [{"context": "C", "question": "Q?", "answers": {"text": ["x", "y"], "answer_start": [0, 0]}}]
    assert squad_records(rows, "data.task")[0]["answers"] == [["x", "y"]]
    with pytest.raises(GridrunError, match="needs context/question/answers"):
        squad_records([{"prompt": "p"}], "data.task")


def test_export_refuses_an_ambiguous_trial_suffix() -> None:
    from gridrun.export import pick_trial

    summary = {"trials": [{"trial_id": "ab_00001"}, {"trial_id": "cd_00011"}], "best": None}
    assert pick_trial(summary, "00011")["trial_id"] == "cd_00011"
    with pytest.raises(GridrunError, match="matches 2 trials"):
        pick_trial(summary, "1")


def test_validate_reads_a_local_dataset_folder_and_checks_its_answer_format(tmp_path: Path) -> None:
    """A downloaded hub snapshot passes validate, and the train/test format check reads it like any local data."""
    import yaml

    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"q{i}", "answer": f"so {i}\n#### {i}"} for i in range(5)]
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = yaml.safe_load((ROOT / "search_spaces" / "qwen2.5-0.5b-instruct" / "gsm8k.yaml").read_text())
    spec["model"] = {"name": "builtin:tiny-general"}
    spec["data"].update(task=str(folder), eval=str(folder), subset=None, eval_size=2)
    spec["resources"] = {"cpu": 1, "gpu": 0}
    spec["forgetting"] = {"probe": "builtin:general-probe"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = run_cli("validate", str(path))
    assert r.returncode == 0, r.stderr
    # targets without the format the evaluator reads (the GSM8K study's 40% -> 5% mismatch)
    (folder / "train.jsonl").write_text(
        "\n".join(json.dumps({"question": f"q{i}", "answer": f"so {i}"}) for i in range(5))
    )
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "train/test format mismatch" in r.stderr, r.stderr


def test_squad_prompt_formats_score_the_same_eval_questions(tmp_path: Path) -> None:
    """eval_size counts questions in both formats: a sequential trial and a batch trial are scored on the same
    questions (the first eval_size of the source, grouped by context only in sequential)."""
    rows = [
        {"context": f"C{c}", "question": f"Q{c}.{q}?", "answers": {"text": [f"a{c}.{q}"], "answer_start": [0]}}
        for c in range(3)
        for q in range(3)
    ]
    f = tmp_path / "squad.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    golds = {}
    for fmt in ("batch", "sequential"):
        opts = {"prompt_format": fmt, "questions_per_context": 10}
        _, ev = load_task_data(_data(str(f), adapter="squad", eval=str(f), eval_size=5, options=opts), 0)
        golds[fmt] = [g for r in ev for g in (r["answers"] if fmt == "sequential" else r["answers"][:1])]
    assert golds["batch"] == golds["sequential"] == [["a0.0"], ["a0.1"], ["a0.2"], ["a1.0"], ["a1.1"]]
