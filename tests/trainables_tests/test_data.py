"""Loss masking, EOS, sample ratio, and the real file loaders (JSONL / JSON / Parquet) with their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridrun.errors import GridrunError
from tests.conftest import data_section
from trainables.data import IGNORE_INDEX, collate, encode_example, load_task_data, render_prompt, subsample


@pytest.fixture(scope="module")
def tok(tiny_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_prompt_positions_are_masked_and_eos_appended(tok) -> None:
    prompt = render_prompt(tok, "Return only a JSON object with the keys name.\nname: Ana", "chat")
    enc = encode_example(tok, prompt, '{"name": "Ana"}', max_len=256)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok('{"name": "Ana"}', add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == [*p_ids, *a_ids, tok.eos_token_id]
    assert enc["labels"][: len(p_ids)] == [IGNORE_INDEX] * len(p_ids)
    assert enc["labels"][len(p_ids) :] == [*a_ids, tok.eos_token_id]
    assert tok.decode(enc["input_ids"][len(p_ids) :], skip_special_tokens=True) == '{"name": "Ana"}'


def test_long_examples_keep_the_answer(tok) -> None:
    enc = encode_example(tok, "word " * 300, "the answer", max_len=32)
    assert len(enc["input_ids"]) == 32
    a = tok("the answer", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["labels"][-len(a) :] == a and enc["input_ids"][-len(a) :] == a


def test_collate_pads_labels_with_ignore_index(tok) -> None:
    a = encode_example(tok, "short", "x", 64)
    b = encode_example(tok, "a much longer prompt than the other", "y", 64)
    side = tok.padding_side
    batch = collate([a, b], tok)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    n = len(a["input_ids"])
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][0, n:].eq(0).all()
    assert batch["input_ids"][0, :n].tolist() == a["input_ids"]  # right-padded, whatever the tokenizer's side
    assert batch["input_ids"][0, n:].eq(tok.pad_token_id).all() and tok.padding_side == side


def test_padding_free_collate_packs_one_row_with_restarting_positions(tok) -> None:
    a = encode_example(tok, "short", "x", 64)
    b = encode_example(tok, "a much longer prompt than the other", "y", 64)
    batch = collate([a, b], tok, padding_free=True)
    na, nb = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"][0].tolist() == a["input_ids"] + b["input_ids"] and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(na)) + list(range(nb))
    # the first label of each example is the separator: no token predicts across the boundary
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, *a["labels"][1:], IGNORE_INDEX, *b["labels"][1:]]


def test_template_string_is_used_verbatim(tok) -> None:
    assert render_prompt(tok, "2+2?", "Q: {prompt}\nA: ") == "Q: 2+2?\nA: "


def test_sample_ratio_takes_a_seeded_subset() -> None:
    a = subsample(512, 0.25, seed=0)
    assert len(a) == 128 and len(set(a)) == 128 and a == sorted(a)
    assert subsample(512, 0.25, seed=0) == a
    assert subsample(512, 0.25, seed=1) != a
    assert subsample(512, 1.0, seed=0) == list(range(512))
    assert len(subsample(3, 0.01, seed=0)) == 1
    with pytest.raises(GridrunError, match=r"data.sample_ratio: must be in \(0, 1\]"):
        subsample(10, 1.5, seed=0)


def _data(task: str, **kw):
    return data_section(task, **{"train_size": 64, **kw})


def test_builtin_task_has_disjoint_deterministic_eval() -> None:
    train, ev = load_task_data(_data("builtin:json-format"), seed=0)
    train2, _ = load_task_data(_data("builtin:json-format"), seed=0)
    assert train == train2 and len(train) == 64 and len(ev) == 4
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}
    kinds = {r["kind"] for r in load_task_data(_data("builtin:json-format", train_size=400), seed=0)[0]}
    assert kinds == {"plain", "hard_negative", "fix_bad_output"}


def test_jsonl_json_and_parquet_with_field_mapping(tmp_path: Path) -> None:
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        train, ev = load_task_data(_data(str(tmp_path / name), prompt_field="q", answer_field="a"), seed=0)
        assert len(train) + len(ev) == 20 and len(ev) == 4  # held out from the end, never trained on
        assert train[0]["prompt"] == "question 0" and ev[-1]["answer"] == "answer 19"


@pytest.mark.parametrize(
    ("content", "kw", "expected"),
    [
        ("", {}, "holds no records"),
        (
            '{"prompt": "x"}\n',
            {},
            r"1 of 1 rows of .* are malformed .*data\.max_bad_fraction 0\.01\); first: row 0 has no field 'answer' "
            r"\(fields: prompt\)",
        ),
        ('{"prompt": "x", "answer": 3}\n', {}, "field 'answer' must be text"),
        ('{"prompt": "x", "answer": "y"}\nnot json\n', {}, "line 2 is not valid JSON"),
    ],
)
def test_bad_files_fail_with_one_line(tmp_path: Path, content: str, kw: dict, expected: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(GridrunError, match=expected) as e:
        load_task_data(_data(str(p), **kw), seed=0)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(GridrunError, match=r"data\.task: data file not found"):
        load_task_data(_data("/nonexistent/train.jsonl"), seed=0)
    with pytest.raises(GridrunError, match="unknown builtin task 'builtin:nope'; known: builtin:json-format"):
        load_task_data(_data("builtin:nope"), seed=0)


def test_local_dataset_folder_in_hub_layout(tmp_path: Path) -> None:
    """A hub dataset downloaded for an offline cluster: a folder whose file names give the splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 3)):
        rows = [{"question": f"{split} q{i}", "answer": f"step\n#### {i}"} for i in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm8k" / "main" / f"{split}-00000-of-00001.parquet")
    data = data_section(str(tmp_path / "gsm8k"), prompt_field="question", split="train", eval_split="test", eval_size=2)
    train, ev = load_task_data(data.model_copy(update={"eval": str(tmp_path / "gsm8k")}), 0)
    assert [r["prompt"] for r in train] == [f"train q{i}" for i in range(6)]
    assert [r["prompt"] for r in ev] == ["test q0", "test q1"] and ev[0]["answer"].endswith("#### 0")


def test_unknown_hub_dataset_is_one_line() -> None:
    with pytest.raises(GridrunError) as e:
        load_task_data(data_section("no-such-org/no-such-dataset-xyz"), 0)
    assert str(e.value).startswith("data.task: cannot load dataset 'no-such-org/no-such-dataset-xyz'")
    assert "\n" not in str(e.value)


def test_a_few_malformed_records_are_skipped_as_in_training(tmp_path: Path) -> None:
    """validate and the driver read records with the trial's rule: a bad row under data.max_bad_fraction is skipped."""
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(199)]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [*rows[:50], {"prompt": "no answer"}, *rows[50:]]) + "\n")
    train, ev = load_task_data(_data(str(p), eval_size=4), seed=0)
    assert len(train) == 195 and [r["answer"] for r in ev] == ["a195", "a196", "a197", "a198"]
    assert "no answer" not in {r["prompt"] for r in train}
