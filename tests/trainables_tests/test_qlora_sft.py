"""The trainable's loop, called directly: sample ratio reported, forgetting measured, exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainables.qlora_sft import merge_params, run


def _trial(spec, **params) -> dict:
    return merge_params(spec.trial_dict(), params)


@pytest.fixture
def baseline(tiny_spec, tiny_model_path) -> float:
    from gridrun.baseline import compute_baseline

    return compute_baseline(tiny_spec.trial_dict())


def test_sample_ratio_is_applied_and_reported(tiny_spec, baseline) -> None:
    reports: list[dict] = []
    last = run(_trial(tiny_spec, **{"data.sample_ratio": 0.25}), baseline, lambda m, d: reports.append(m))
    # 64 generated examples, a quarter kept: 16 trained on, one epoch → 16 samples seen, 2 steps of 8
    assert last["data/train_samples"] == 16
    assert last["data/train_samples_total"] == 64
    assert last["samples_seen"] == 16 and last["step"] == 2 and last["progress"] == 1
    assert [r["samples_seen"] for r in reports] == [16]


def test_every_report_carries_the_design_namespaces(tiny_spec, baseline) -> None:
    reports: list[tuple[dict, list[str]]] = []
    run(_trial(tiny_spec), baseline, lambda m, d: reports.append((m, sorted(p.name for p in d.iterdir()))))
    assert [m["step"] for m, _ in reports] == [4, 8]  # every eval_every=4 steps, and at the end
    for m, files in reports:
        for key in (
            "train/loss",
            "train/lr",
            "task/format_success",
            "task/duplicate_json_rate",
            "forget/probe_loss",
            "forget/probe_loss_base",
            "forget/delta",
            "objective",
            "samples_seen",
            "perf/tokens_per_s",
            "perf/peak_mem_mb",
        ):
            assert key in m, key
        assert m["forget/probe_loss_base"] == baseline
        assert m["forget/delta"] == pytest.approx((m["forget/probe_loss"] - baseline) / baseline)
        assert files == ["adapter", "gridrun_card.json", "trainer_state.pt"]


def test_high_learning_rate_forgets_more(tiny_spec, baseline) -> None:
    low = run(_trial(tiny_spec, **{"train.lr": 1e-5}), baseline, lambda m, d: None)
    high = run(_trial(tiny_spec, **{"train.lr": 2e-2}), baseline, lambda m, d: None)
    assert abs(low["forget/delta"]) < 0.05
    assert high["forget/delta"] > 5 * max(abs(low["forget/delta"]), 0.01)


def test_restored_trial_continues_exactly(tiny_spec, baseline, tmp_path: Path) -> None:
    """Stop after 4 steps, restore from that checkpoint, finish: identical to an uninterrupted run."""
    spec = _trial(tiny_spec, **{"lora.dropout": 0.1})  # dropout makes RNG state matter
    straight: list[dict] = []
    run(spec, baseline, lambda m, d: straight.append(m))

    saved = tmp_path / "ckpt"

    def keep(m: dict, d: Path) -> None:
        shutil.copytree(d, saved, dirs_exist_ok=True)

    first = run(spec, baseline, keep, max_steps=4)
    assert first["step"] == 4
    resumed: list[dict] = []
    run(spec, baseline, lambda m, d: resumed.append(m), restore=saved)
    assert [m["step"] for m in resumed] == [8]
    end, ref = resumed[-1], straight[-1]
    for key in (
        "train/loss",
        "forget/probe_loss",
        "task/format_success",
        "objective",
        "samples_seen",
        "train/lr",
    ):
        assert end[key] == ref[key], key
