"""``gridrun prepare``: every dataset a spec reads lands in one folder (hub layout, Parquet), the prepared spec reads
it there and validates offline; a source that cannot be fetched is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import run_cli


def _parquet(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")


def _standins(root: Path) -> dict[str, Path]:
    """Local folders laid out like the hub datasets (subsets as sub-folders), with their real columns."""
    gsm = root / "gsm8k"
    for split, n in (("train", 12), ("test", 6)):
        _parquet(
            gsm / "main", split, [{"question": f"{split} {i}+1?", "answer": f"{i}+1\n#### {i + 1}"} for i in range(n)]
        )
    wiki = root / "wikitext"
    lines = ["", " = Rome = ", " Rome is the capital of Italy . It lies on the Tiber . "] * 40
    _parquet(wiki / "wikitext-2-raw-v1", "test", [{"text": t} for t in lines])
    arc = root / "ai2_arc"
    arc_rows = [
        {
            "id": f"q{i}",
            "question": f"What is {i} plus one?",
            "choices": {"text": [str(i + 1), str(i + 2), str(i)], "label": ["A", "B", "C"]},
            "answerKey": "A",
        }
        for i in range(30)
    ]
    _parquet(arc / "ARC-Challenge", "test", arc_rows)
    return {"gsm8k": gsm, "wikitext": wiki, "arc": arc}


def _spec(tmp_path: Path, folders: dict[str, Path]) -> Path:
    spec = {
        "name": "prep",
        "model": {"name": "builtin:tiny-general"},
        "data": {
            "task": str(folders["gsm8k"]),
            "subset": "main",
            "eval": str(folders["gsm8k"]),
            "split": "train",
            "eval_split": "test",
            "prompt_field": "question",
            "answer_field": "answer",
            "eval_size": 4,
        },
        "evaluate": {"evaluators": ["gsm8k"]},
        "objective": {"metric": "task/accuracy"},
        "forgetting": {
            "probe": str(folders["wikitext"]),
            "probe_subset": "wikitext-2-raw-v1",
            "mc": [
                {"benchmark": "arc_challenge", "source": str(folders["arc"]), "subset": "ARC-Challenge", "limit": 20}
            ],
        },
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "storage": str(tmp_path / "results")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(folder: Path, split: str) -> list[dict]:
    return pq.read_table(folder / f"{split}-00000-of-00001.parquet").to_pylist()


def test_prepare_fetches_every_dataset_and_the_prepared_spec_reads_them(tmp_path: Path) -> None:
    folders = _standins(tmp_path / "hub")
    out = tmp_path / "prepared"
    r = run_cli("prepare", str(_spec(tmp_path, folders)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    target = out / "prep.yaml"
    assert f"wrote {target}" in r.stdout
    prepared = yaml.safe_load(target.read_text())
    data, fg = prepared["data"], prepared["forgetting"]
    # the task's two splits, every row, from the subset's sub-folder
    task = Path(data["task"])
    assert data["eval"] == data["task"] and data["subset"] is None and task.parent == out / "datasets"
    assert _rows(task, "train") == _rows(folders["gsm8k"] / "main", "train")
    assert _rows(task, "test") == _rows(folders["gsm8k"] / "main", "test")
    # the probe: the documents it reads, in order (the whole split here: it is smaller than the probe's budget)
    assert _rows(Path(fg["probe"]), "test") == _rows(folders["wikitext"] / "wikitext-2-raw-v1", "test")
    # the benchmark: its first `limit` items of its split, with its hub columns
    mc = fg["mc"][0]
    assert mc["benchmark"] == "arc_challenge" and mc["subset"] is None and mc["split"] == "test"
    assert _rows(Path(mc["source"]), "test") == _rows(folders["arc"] / "ARC-Challenge", "test")[:20]
    manifest = json.loads((out / "gridrun_prepare.json").read_text())
    assert [s["field"] for s in manifest["sources"]] == ["data.task", "forgetting.probe", "forgetting.mc[0]"]
    # the prepared spec validates offline with nothing left to check on the hub, and measures the same thing
    r = run_cli("validate", str(target))
    assert r.returncode == 0 and "not checked offline" not in r.stdout, r.stdout + r.stderr


def test_prepare_offline_names_what_it_could_not_fetch(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump({"name": "h", "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}}))
    r = run_cli("prepare", str(path), "--out", str(tmp_path / "out"))  # the tests run with HF_HUB_OFFLINE=1
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "gridrun: error: prepare: could not fetch model.name: model 'Qwen/Qwen2.5-0.5B-Instruct': the hub is "
        "switched off here (HF_HUB_OFFLINE=1)"
    )


def test_validate_lists_hub_ids_offline_and_deep_refuses_to_guess(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    gsm8k = ROOT / "search_spaces" / "qwen2.5-0.5b-instruct" / "gsm8k.yaml"
    r = run_cli("validate", str(gsm8k))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "not checked offline (hub ids; --deep resolves them): Qwen/Qwen2.5-0.5B-Instruct, Rowan/hellaswag, "
        "Salesforce/wikitext, allenai/ai2_arc, allenai/winogrande, openai/gsm8k"
    )
    r = run_cli("validate", str(gsm8k), "--deep")
    assert r.returncode == 2 and "the hub is switched off here (HF_HUB_OFFLINE=1)" in r.stderr, r.stderr


def test_validate_refuses_lora_targets_the_model_lacks(tmp_path: Path) -> None:
    from tests.conftest import FORGETTING

    r = run_cli("validate", str(FORGETTING), "--set", "lora.target_modules=[q_proj, c_attn]")
    assert r.returncode == 2
    assert "lora.target_modules: c_attn not in builtin:tiny-general (qwen2); its linear layers are:" in r.stderr
    assert "q_proj" in r.stderr.split("linear layers are:")[1]


def test_lora_target_names_are_cached_by_the_config_content(tmp_path: Path, monkeypatch) -> None:
    """The names come from a meta-device model once per architecture; a launch after that reads them from the
    cache, and a changed config is a new architecture (built again, judged on its own modules)."""
    import transformers

    from gridrun.errors import GridrunError
    from gridrun.spec import load_spec
    from gridrun.validate import check_lora_targets
    from tests.conftest import FORGETTING

    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    spec = load_spec(FORGETTING, [f"model.name={model}", "lora.target_modules=[q_proj, up_proj]"])
    builds: list[str] = []
    real = transformers.AutoModelForCausalLM.from_config

    def counted(cfg, *a, **k):
        builds.append(cfg.model_type)
        return real(cfg, *a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", counted)
    check_lora_targets(spec)
    check_lora_targets(spec)
    assert builds == ["llama"]  # the second check read the cache
    cached = json.loads((tmp_path / "cache" / "architectures.json").read_text())
    assert [v["model_type"] for v in cached.values()] == ["llama"]

    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(GridrunError) as e:  # the cached llama names would have let it pass
        check_lora_targets(spec)
    assert str(e.value).startswith("lora.target_modules: q_proj, up_proj not in ") and "(gpt_neox)" in str(e.value)
    assert "query_key_value" in str(e.value)
    assert builds == ["llama", "gpt_neox"]
