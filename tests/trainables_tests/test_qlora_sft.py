"""The trainable's loop, called directly: sample ratio reported, forgetting measured, exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainables.qlora_sft import run


def _trial(spec, **params):
    return spec.with_params(params)


@pytest.fixture
def baseline(tiny_spec, tiny_model_path):
    from trainables.qlora_sft import compute_baselines

    return compute_baselines(tiny_spec, ["probe"])


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
            "data/dropped_too_long",
            "data/bad_rows",
        ):
            assert key in m, key
        base = baseline.of("probe").loss
        assert m["forget/probe_loss_base"] == base
        assert m["forget/delta"] == pytest.approx((m["forget/probe_loss"] - base) / base)
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("quantization", ["nf4", "int8", "none"])
def test_untrained_adapter_reports_no_forgetting(tiny_spec, tiny_model_path, quantization: str, dtype: str) -> None:
    """At LoRA init (B = 0) a trial computes the function of the model it starts from, so forget/delta is 0 on
    every path: the baseline is measured on the same prepared model (peft's k-bit preparation recasts layers;
    measured on the raw base, nf4 and int8 with bfloat16 were off by 3e-4 and 1.1e-3)."""
    from trainables.evaluation import eval_round, setup_eval
    from trainables.qlora_sft import compute_baselines, setup_model

    spec = tiny_spec.with_params({"model.quantization": quantization, "model.compute_dtype": dtype})
    base = compute_baselines(spec, ["probe"])
    model, tok, _ = setup_model(spec)
    metrics = eval_round(spec, model, tok, setup_eval(spec, tok, base))
    assert abs(metrics["forget/delta"]) < 1e-4
    assert metrics["forget/probe_loss"] == pytest.approx(base.of("probe").loss, rel=1e-6)


def test_non_finite_loss_reports_at_once_and_ends_the_trial(tiny_spec, baseline) -> None:
    """A diverged step is reported immediately (not at the next eval_every), with its checkpoint, and the loop
    ends: the NonFiniteLoss stopper then records why."""
    import math

    from gridrun.stopping import NonFiniteLoss

    # lr 1e30 without clipping: the first update makes the logits overflow, the second step's loss is not finite
    spec = _trial(tiny_spec, **{"train.lr": 1e30, "train.max_grad_norm": 0.0, "train.eval_every": 100})
    reports: list[tuple[dict, bool]] = []
    last = run(spec, baseline, lambda m, d: reports.append((m, (d / "adapter").is_dir())))
    assert len(reports) == 1 and reports[0][1]  # one report, with a checkpoint
    assert not math.isfinite(last["train/loss"]) and last["step"] < 8 and last["progress"] < 1
    reasons: dict[str, str] = {}
    assert NonFiniteLoss(reasons)("t1", last) and reasons == {"t1": "non-finite loss"}


def test_evaluate_adapter_reproduces_every_metric_of_its_checkpoint(tiny_spec, tmp_path: Path, monkeypatch) -> None:
    """A saved adapter re-scored by evaluate_adapter gives the trial's numbers at that checkpoint, including the
    weighted task metric, the multiple-choice forgetting measures and the objective; its base is prepared as the
    trial's was (float16 compute upcasts a 4-bit base's norms: on CPU they are float32 already, so it is counted)."""
    import importlib

    import trainables.model
    from forgetting import cached_baselines
    from trainables.qlora_sft import compute_baselines, evaluate_adapter

    prepared: list[str] = []
    real_prepare = trainables.model.prepare_base

    def prepare(base, model):
        prepared.append(model.name)
        return real_prepare(base, model)

    monkeypatch.setattr(trainables.model, "prepare_base", prepare)
    # the module (the package exports its function under the same name)
    monkeypatch.setattr(importlib.import_module("trainables.qlora_sft"), "prepare_base", prepare)

    spec = _trial(tiny_spec).model_copy(deep=True)
    spec = spec.with_params(
        {
            "forgetting.mc": "builtin:general-mc",
            "objective.metric": "task/weighted",
            "objective.weights": {"task/format_success": 1.0, "task/exact_match": 0.5},
            "train.eval_every": 100,
        }
    )
    base = cached_baselines(spec, compute_baselines)[0]
    saved = tmp_path / "ckpt"
    reported = run(spec, base, lambda m, d: shutil.copytree(d, saved, dirs_exist_ok=True))
    prepared.clear()
    again = evaluate_adapter(spec, saved / "adapter")  # base scores from the cache, as a user would
    assert prepared == [spec.model.name]
    keys = [k for k in reported if k.startswith(("task/", "forget/")) or k == "objective"]
    assert {
        "task/weighted",
        "forget/mc_accuracy",
        "forget/mc_delta",
        "forget/mc_custom",
        "forget/mc_custom_base",
    } <= set(keys)
    assert set(keys) == set(again)
    for k in keys:
        assert again[k] == pytest.approx(reported[k], rel=1e-6, abs=1e-9), k


def test_padding_free_training_equals_the_padded_computation(tiny_spec) -> None:
    """One micro-batch packed into one row with restarting position ids gives the padded batch's loss and
    gradients (dropout off: two forwards of different shapes would draw different dropout masks)."""
    from trainables.data import collate
    from trainables.qlora_sft import setup_model, setup_train_data
    from trainables.tokenized import examples

    spec = tiny_spec.with_params({"lora.dropout": 0.0})
    model, tok, _ = setup_model(spec)
    encoded, _ = setup_train_data(spec, tok)
    batch = examples(encoded, list(range(8)))
    assert len({len(b["input_ids"]) for b in batch}) > 1  # padding would be computed
    # one optimizer step first, so LoRA's B is not zero and every adapter weight gets a gradient
    model(**collate(batch, tok), use_cache=False).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad.sign()
    results = []
    for padding_free in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(**collate(batch, tok, padding_free), use_cache=False)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.item(), grads))
    (loss_pad, g_pad), (loss_free, g_free) = results
    assert loss_free == pytest.approx(loss_pad, rel=1e-5)
    assert set(g_pad) == set(g_free) and len(g_pad) > 0
    for name, g in g_pad.items():
        torch.testing.assert_close(g_free[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_padding_free_trial_resumes_exactly(tiny_spec, baseline, tmp_path: Path) -> None:
    spec = _trial(tiny_spec, **{"train.padding_free": True, "lora.dropout": 0.1})
    straight: list[dict] = []
    run(spec, baseline, lambda m, d: straight.append(m))
    saved = tmp_path / "ckpt"
    run(spec, baseline, lambda m, d: shutil.copytree(d, saved, dirs_exist_ok=True), max_steps=4)
    resumed: list[dict] = []
    run(spec, baseline, lambda m, d: resumed.append(m), restore=saved)
    for key in ("train/loss", "forget/probe_loss", "objective", "samples_seen"):
        assert resumed[-1][key] == straight[-1][key], key
