"""The learning-rate schedule a trial trains with: transformers' (as its Trainer uses them), checked against the
schedules' definitions, and what a trial reports as train/lr."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.qlora_sft import lr_schedule, run

WARMUP, TOTAL = 4, 20


def _lrs(kind: str, warmup: int, total: int) -> list[float]:
    """The multiplier of the peak rate at each optimizer step 0..total-1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_schedule(opt, kind, warmup, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _definition(kind: str, warmup: int, total: int, step: int) -> float:
    if step < warmup:
        return step / warmup  # linear warm-up from 0
    if kind == "constant":
        return 1.0
    p = (step - warmup) / max(1, total - warmup)  # progress through the decay
    return (1 + math.cos(math.pi * p)) / 2 if kind == "cosine" else max(0.0, 1 - p)


@pytest.mark.parametrize("warmup", [0, WARMUP])
@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_follows_its_definition(kind: str, warmup: int) -> None:
    got = _lrs(kind, warmup, TOTAL)
    assert got == pytest.approx([_definition(kind, warmup, TOTAL, s) for s in range(TOTAL)], abs=1e-12)


def test_landmarks() -> None:
    cosine = _lrs("cosine", WARMUP, TOTAL)
    assert cosine[: WARMUP + 1] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cosine[WARMUP + (TOTAL - WARMUP) // 2] == pytest.approx(0.5)  # half way through the decay
    assert _lrs("linear", 0, 10)[-1] == pytest.approx(0.1) and _lrs("constant", 0, 5) == [1.0] * 5


def test_a_trial_reports_the_rate_it_trained_with(tiny_spec, tiny_model_path) -> None:
    """train/lr at each report is the rate the next step would use: peak x schedule(step)."""
    from trainables.qlora_sft import compute_baselines

    spec = tiny_spec.with_params({"train.lr": 0.01, "train.warmup_ratio": 0.25, "train.lr_scheduler": "linear"})
    reports: list[dict] = []
    run(spec, compute_baselines(spec, ["probe"]), lambda m, d: reports.append(m))
    total = reports[-1]["step"]  # 8 steps: 64 examples, batch 8
    for m in reports:
        assert m["train/lr"] == pytest.approx(0.01 * _definition("linear", total // 4, total, m["step"]), abs=1e-12)
