"""What a trial leaves in a Tune worker that runs the next trial (reuse_actors): no open generator (a vLLM engine
left open keeps its GPU memory there), closed exactly once however the trial ends, and GPU figures of its own."""

from __future__ import annotations

from unittest import mock

import pytest

import evaluators
from forgetting import Baselines
from gridrun.errors import GridrunError
from trainables.qlora_sft import run


@pytest.fixture
def baseline(tiny_spec, tiny_model_path):
    from trainables.qlora_sft import compute_baselines

    return compute_baselines(tiny_spec, ["probe"])


@pytest.fixture
def close_spy(monkeypatch: pytest.MonkeyPatch) -> list[mock.MagicMock]:
    """The ``close`` of every generator ``evaluators.build_generator`` builds from now on: the real generator (an
    HFGenerator for the tiny spec) with its real ``close`` wrapped to count the calls."""
    real_build = evaluators.build_generator
    spies: list[mock.MagicMock] = []

    def build(spec):
        gen = real_build(spec)
        spy = mock.MagicMock(wraps=gen.close)
        gen.close = spy  # type: ignore[method-assign]
        spies.append(spy)
        return gen

    monkeypatch.setattr(evaluators, "build_generator", build)
    return spies


def test_a_finished_trial_closes_its_generator_once(tiny_spec, baseline, close_spy) -> None:
    reports: list[dict] = []
    run(tiny_spec.with_params({"data.sample_ratio": 0.25}), baseline, lambda m, d: reports.append(m))
    assert [r["step"] for r in reports] == [2]  # the trial ran to its end, generating at step 0 and at its report
    assert [s.call_count for s in close_spy] == [1]


@pytest.mark.parametrize(
    "error",
    [SystemExit(0), RuntimeError("storage went away")],  # Tune's report stops a trial with sys.exit(0); a failure
    ids=["stopped", "failed"],
)
def test_a_trial_that_raises_closes_its_generator_once(tiny_spec, baseline, close_spy, error) -> None:
    def report(metrics, ckpt_dir):
        raise error

    with pytest.raises(type(error)):
        run(tiny_spec.with_params({"data.sample_ratio": 0.25}), baseline, report)
    assert [s.call_count for s in close_spy] == [1]


def test_a_setup_that_fails_after_building_the_generator_closes_it(tiny_spec, tiny_model_path, close_spy) -> None:
    with pytest.raises(GridrunError, match="no cached base-model value for measure 'probe'"):
        run(tiny_spec, Baselines(), lambda m, d: None)  # the probe's base is missing: setup_eval fails after building
    assert [s.call_count for s in close_spy] == [1]


@pytest.mark.gpu
def test_a_trial_in_a_reused_worker_reports_its_own_gpu_peak(tiny_spec, tiny_model_path) -> None:
    """Tune runs the next trial in the same worker (reuse_actors): torch's allocator peak starts again at setup."""
    import torch

    from trainables.gpu_memory import peak_mem_mb
    from trainables.qlora_sft import setup_model

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    earlier = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")  # an earlier trial's 2 GiB in this process
    del earlier
    _model, _, device = setup_model(tiny_spec.with_params({"resources.gpu": 1, "model.quantization": "none"}))  # kept
    assert device == "cuda"
    assert 0 < peak_mem_mb("cuda") < 1024  # the tiny model's load, not the earlier 2048 MiB
