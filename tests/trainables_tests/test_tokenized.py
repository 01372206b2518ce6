"""The tokenized training split: Arrow on disk built once per key, examples that fit with their EOS, bad rows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridrun.errors import GridrunError
from tests.conftest import ROOT, data_section
from trainables.data import IGNORE_INDEX, encode_example, render_prompt
from trainables.tokenized import eval_records, examples, load_train_set


@pytest.fixture(scope="module")
def tok(tiny_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> Path:
    """A fresh gridrun cache for the data (the tiny model's folder was resolved before, in the user cache)."""
    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _builds(cache: Path) -> list[str]:
    log = cache / "data" / "builds.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_trial_train_data_is_a_memory_mapped_arrow_dataset(tok, cache: Path, tiny_spec) -> None:
    import datasets

    from trainables.qlora_sft import setup_train_data

    spec = tiny_spec.with_params({"data.sample_ratio": 0.5})
    encoded, full = setup_train_data(spec, tok)
    assert isinstance(encoded, datasets.Dataset) and not isinstance(encoded, list)
    assert encoded.cache_files and all(f["filename"].startswith(str(cache / "data")) for f in encoded.cache_files)
    assert len(full.dataset) == 64 and len(encoded) == 32 and set(encoded.column_names) >= {"input_ids", "labels"}
    again, _ = setup_train_data(spec, tok)  # a later trial reuses the build
    assert again[:]["input_ids"] == encoded[:]["input_ids"] and len(_builds(cache)) == 1


def test_ids_match_the_reference_encoding(tok, cache: Path, tmp_path: Path) -> None:
    """Every kept example is exactly encode_example's prompt-masked ids (the per-row path it replaces)."""
    rows = [{"prompt": f"Question {i}: " + "word " * (i % 7), "answer": f"answer {i}"} for i in range(30)]
    data = data_section(str(_jsonl(tmp_path / "t.jsonl", rows)), template="Q: {prompt}\nA: ", max_seq_len=64)
    unbuilt = eval_records(data, tok, 0)  # as evaluate_adapter on a machine without the build: nothing is built
    assert unbuilt == rows[-4:] and not _builds(cache)
    ts = load_train_set(data, tok, 0)
    assert eval_records(data, tok, 0) == unbuilt  # the build keeps the same held-out tail
    train = rows[: 30 - 4]  # the last eval_size rows are held out
    want = [encode_example(tok, render_prompt(tok, r["prompt"], data.template), r["answer"], 64) for r in train]
    assert examples(ts.dataset, list(range(len(train)))) == want


def test_too_long_examples_are_dropped_never_cut(tok, cache: Path, tmp_path: Path) -> None:
    rows = [{"prompt": "word " * (i * 5 + 1), "answer": "done " * (i % 4 + 1)} for i in range(40)]
    data = data_section(str(_jsonl(tmp_path / "t.jsonl", rows)), template="{prompt}", max_seq_len=48, eval_size=2)
    ts = load_train_set(data, tok, 0)
    full = [encode_example(tok, r["prompt"], r["answer"], 10_000) for r in rows[:38]]
    fits = [e for e in full if len(e["input_ids"]) <= 48]
    assert 0 < len(fits) < len(full)
    assert ts.dropped_too_long == len(full) - len(fits) and ts.metrics()["data/dropped_too_long"] == len(full) - len(
        fits
    )
    kept = examples(ts.dataset, list(range(len(ts.dataset))))
    assert kept == fits
    for e in kept:
        assert e["input_ids"][-1] == tok.eos_token_id and e["labels"][-1] == tok.eos_token_id
        assert len(e["input_ids"]) <= 48 and IGNORE_INDEX in e["labels"]


def test_bad_rows_are_skipped_counted_and_named(tok, cache: Path, tmp_path: Path, caplog) -> None:
    good = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(200)]
    rows = [*good[:57], "not json", *good[57:120], {"prompt": "x"}, *good[120:], *good[:10]]
    data = data_section(str(_jsonl(tmp_path / "t.jsonl", rows)), template="{prompt}", eval_size=10)
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        ts = load_train_set(data.model_copy(update={"max_bad_fraction": 0.01}), tok, 0)
    assert (ts.rows, ts.bad_rows, len(ts.dataset)) == (202, 2, 200)
    assert ts.metrics()["data/bad_rows"] == 2
    warning = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warning) == 1 and "skipped 2 malformed rows" in warning[0]
    assert "first: row 57 is not valid JSON" in warning[0] and "\n" not in warning[0]
    with pytest.raises(GridrunError) as e:
        load_train_set(data.model_copy(update={"max_bad_fraction": 0.005}), tok, 0)
    msg = str(e.value)
    assert msg.startswith("data.task: 2 of 202 rows") and "data.max_bad_fraction 0.005" in msg and "\n" not in msg
    assert "row 57" in msg and len(_builds(cache)) == 1  # max_bad_fraction is checked on the build, not in its key


def test_chat_rows_missing_the_answer_are_bad_rows(tok, cache: Path, tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [chat] * 8 + [{"messages": [{"role": "user", "content": "hi"}]}] + [chat] * 3
    data = data_section(str(_jsonl(tmp_path / "c.jsonl", rows)), messages_field="messages", eval_size=2)
    with pytest.raises(GridrunError, match=r"1 of 10 rows .* row 8 does not end with an assistant message"):
        load_train_set(data, tok, 0)


def test_two_processes_building_at_once_build_once(tok, cache: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    rows = [{"prompt": f"q{i} " * (i % 9), "answer": f"a{i}"} for i in range(3000)]
    src = _jsonl(tmp_path / "t.jsonl", rows)
    script = (
        "import sys; from transformers import AutoTokenizer; from gridrun.spec import DataSpec; "
        "from trainables.tokenized import load_train_set; "
        f"t = load_train_set(DataSpec(task={str(src)!r}, template='{{prompt}}'), "
        f"AutoTokenizer.from_pretrained({str(tiny_model_path)!r}), 0); print(len(t.dataset), t.folder)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRIDRUN_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    lines = {o[0].decode().strip() for o in outs}
    assert len(lines) == 1 and lines.pop().startswith("2968 ")  # both read the same build (32 rows held out)
    assert len(_builds(cache)) == 1


@pytest.mark.parametrize("kind", ["twix_folder", "squad_json", "parquet"])
def test_every_source_kind_trains_on_the_records_the_loader_reads(kind: str, tok, cache: Path, tmp_path: Path) -> None:
    """The Arrow path and the record loader (load_task_data) agree on every kind of source: same training
    records, same held-out evaluation records, encoded alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests import standins
    from tests.gridrun_tests.test_study_inputs import SQUAD_V11
    from trainables.data import load_task_data

    if kind == "twix_folder":
        data = data_section(str(standins.twix(tmp_path, n=30)), messages_field="messages", max_seq_len=512)
    elif kind == "squad_json":
        (tmp_path / "squad.json").write_text(json.dumps(SQUAD_V11))
        data = data_section(str(tmp_path / "squad.json"), adapter="squad", eval=str(tmp_path / "squad.json"))
    else:
        rows = [{"q": f"question {i}", "a": f"answer {i}", "id": i} for i in range(25)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
        data = data_section(str(tmp_path / "d.parquet"), prompt_field="q", answer_field="a", template="{prompt}")
    train, ev = load_task_data(data, 0)
    want = [encode_example(tok, render_prompt(tok, r["prompt"], data.template), r["answer"], 10_000) for r in train]
    ts = load_train_set(data, tok, 0)
    assert examples(ts.dataset, list(range(len(ts.dataset)))) == want and ts.bad_rows == ts.dropped_too_long == 0
    assert eval_records(data, tok, 0) == ev
