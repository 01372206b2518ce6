"""The learning-rate schedule: linear warm-up, then cosine / linear / constant, per optimizer step.

Expected values come from the schedules' definitions (cosine at decay progress p: (1 + cos(pi p)) / 2; linear:
1 - p; p = (step - warmup) / (total - warmup)), then the whole schedule is compared with transformers' own.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from trainables.qlora_sft import lr_lambda

WARMUP, TOTAL = 4, 20  # 16 decay steps


def _cosine(p: float) -> float:
    return (1 + math.cos(math.pi * p)) / 2


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warm_up_climbs_linearly_from_one_over_warmup_to_the_peak(kind: str) -> None:
    f = lr_lambda(kind, WARMUP, TOTAL)
    assert [f(s) for s in range(WARMUP)] == [0.25, 0.5, 0.75, 1.0]  # step 0 already trains (1/warmup, not 0)
    assert f(WARMUP) == 1.0  # decay starts at progress 0: the peak holds for two steps


def test_cosine_with_warm_up() -> None:
    f = lr_lambda("cosine", WARMUP, TOTAL)
    assert f(WARMUP + 8) == pytest.approx(0.5, abs=1e-15)  # halfway through the decay
    assert f(WARMUP + 4) == pytest.approx(_cosine(0.25), abs=1e-15)
    assert f(WARMUP + 4) == pytest.approx((1 + math.sqrt(0.5)) / 2, abs=1e-15)
    assert f(TOTAL - 1) == pytest.approx(_cosine(15 / 16), abs=1e-15)  # last step: just above 0
    assert f(TOTAL) == pytest.approx(0.0, abs=1e-15)  # one past the last step reaches 0


def test_cosine_without_warm_up() -> None:
    f = lr_lambda("cosine", 0, 10)
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5, abs=1e-15)
    assert f(9) == pytest.approx(_cosine(0.9), abs=1e-15)
    assert [f(s) for s in range(10)] == pytest.approx([_cosine(s / 10) for s in range(10)], abs=1e-15)


def test_linear_with_warm_up() -> None:
    f = lr_lambda("linear", WARMUP, TOTAL)
    assert f(WARMUP + 8) == 0.5
    assert f(WARMUP + 4) == 0.75
    assert f(TOTAL - 1) == 1 / (TOTAL - WARMUP) == 0.0625  # last step: 1 - 15/16
    assert f(TOTAL) == 0.0
    assert f(TOTAL + 5) == 0.0  # clamped, never negative


def test_linear_without_warm_up() -> None:
    f = lr_lambda("linear", 0, 10)
    assert [f(s) for s in range(10)] == pytest.approx([1 - s / 10 for s in range(10)], abs=1e-15)
    assert f(9) == pytest.approx(0.1, abs=1e-15)


def test_constant_with_and_without_warm_up() -> None:
    assert [lr_lambda("constant", WARMUP, TOTAL)(s) for s in range(TOTAL)] == [0.25, 0.5, 0.75] + [1.0] * 17
    assert [lr_lambda("constant", 0, TOTAL)(s) for s in range(TOTAL)] == [1.0] * TOTAL


def test_one_step_run_trains_at_the_peak() -> None:
    for kind in ("cosine", "linear", "constant"):
        assert lr_lambda(kind, 0, 1)(0) == 1.0


# ------------------------------------------------------------------------------------ against transformers


def _hf_lrs(kind: str, warmup: int, total: int) -> list[float]:
    """The lr each optimizer step runs at under transformers' scheduler (peak lr 1.0), stepping like the
    trainable: opt.step() then sched.step()."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if kind == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    elif kind == "linear":
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
    else:
        sched = get_constant_schedule_with_warmup(opt, warmup)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _ours(kind: str, warmup: int, total: int) -> list[float]:
    """The same through torch's LambdaLR, as the trainable builds it."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(kind, warmup, total))
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_without_warm_up_the_schedule_is_transformers_exactly(kind: str) -> None:
    assert _ours(kind, 0, TOTAL) == pytest.approx(_hf_lrs(kind, 0, TOTAL), abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_with_warm_up_gridrun_runs_one_step_ahead_of_transformers_during_warm_up(kind: str) -> None:
    """Documented difference: transformers' warm-up is step / warmup (step 0 at lr 0, an update wasted), gridrun's
    is (step + 1) / warmup, so for step < warmup gridrun(step) == transformers(step + 1) and gridrun reaches the
    peak one step earlier (holding it at steps warmup-1 and warmup). From step `warmup` on the decays agree."""
    ours, hf = _ours(kind, WARMUP, TOTAL), _hf_lrs(kind, WARMUP, TOTAL)
    assert hf[:WARMUP] == [0.0, 0.25, 0.5, 0.75]
    assert ours[:WARMUP] == [0.25, 0.5, 0.75, 1.0]
    assert ours[:WARMUP] == hf[1 : WARMUP + 1]
    assert ours[WARMUP:] == pytest.approx(hf[WARMUP:], abs=1e-12)
