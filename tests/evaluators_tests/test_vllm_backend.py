"""The vLLM backend: its plumbing against a stand-in ``vllm`` module (the calls it makes), and, where vLLM and a
GPU are there, against the real engine (skipped otherwise; the GPU validation issue runs it)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from evaluators import GenerationSettings, build_generator
from gridrun.errors import GridrunError
from gridrun.vllm_memory import estimate_engine


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """Records its construction and each ``generate``; answers with the prompt's length."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        FakeLLM.made.append(kwargs)
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompts: list[dict[str, Any]], params: Any, lora_request: Any = None, use_tqdm: bool = True):
        adapter = None
        if lora_request is not None:  # what vLLM reads at this moment: the adapter's folder must be complete
            adapter = sorted(p.name for p in Path(lora_request.lora_path).iterdir())
        self.calls.append({"prompts": prompts, "params": params.kwargs, "lora": lora_request, "files": adapter})
        out = types.SimpleNamespace
        return [out(outputs=[out(text=f"n={len(p['prompt_token_ids'])}")]) for p in prompts]


#: The GPU the stand-in engine starts on (an H100's 80 GiB).
GPU_BYTES = 80 * 2**30


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    import evaluators.vllm_backend

    monkeypatch.setattr(evaluators.vllm_backend, "_gpu_bytes", lambda: GPU_BYTES)
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM  # type: ignore[attr-defined]
    vllm.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest  # type: ignore[attr-defined]
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.made = []
    return FakeLLM


@pytest.fixture
def capability(monkeypatch: pytest.MonkeyPatch):
    """Set what torch says about the GPU's bf16 support (as tests/trainables_tests/test_precision.py does)."""
    import torch

    from gridrun.precision import bf16_supported

    def set_(bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        bf16_supported.cache_clear()

    yield set_
    bf16_supported.cache_clear()


def test_rank_caps() -> None:
    from evaluators.vllm_backend import lora_rank_cap

    assert [lora_rank_cap(r) for r in (1, 2, 8, 9, 16, 64, 65, 512)] == [1, 8, 8, 16, 16, 64, 128, 512]
    with pytest.raises(GridrunError, match=r"^lora\.r: vLLM serves LoRA ranks up to 512, got 600"):
        lora_rank_cap(600)


def test_engines_on_one_gpu_start_one_at_a_time(
    fake_vllm: type[FakeLLM], tiny_spec: Any, capability: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two trials' engines starting together on one GPU (threads here; the lock is a file, so processes alike):
    vLLM's free-memory profiling would count one against the other, so the second waits for the first."""
    import tempfile
    import threading
    import time

    import evaluators.vllm_backend
    from trainables.qlora_sft import setup_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    capability(True)
    starting, overlaps = [0], []

    class SlowLLM(FakeLLM):
        def __init__(self, **kwargs: Any) -> None:
            starting[0] += 1
            overlaps.append(starting[0])
            time.sleep(0.3)  # vLLM's load and profiling run
            starting[0] -= 1
            super().__init__(**kwargs)

    monkeypatch.setattr(sys.modules["vllm"], "LLM", SlowLLM)
    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.25, "lora.r": 4})
    model, _, _ = setup_model(tiny_spec.with_params({"lora.r": 4}))
    gens = [build_generator(spec), build_generator(spec)]
    threads = [threading.Thread(target=g._engine, args=(model,)) for g in gens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_vllm.made) == 2 and overlaps == [1, 1]  # both started, never two at once
    assert (tmp_path / f"gridrun-vllm-start-{evaluators.vllm_backend._gpu_id()}.lock").exists()


def test_plumbing(fake_vllm: type[FakeLLM], tiny_spec: Any, capability: Any) -> None:
    import torch

    from gridrun.builtin import resolve_model
    from trainables.qlora_sft import setup_model

    capability(True)
    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.25, "lora.r": 4})
    assert spec.model.compute_dtype == "auto"
    gen = build_generator(spec)
    assert fake_vllm.made == []  # the engine loads at the first generation, not when the trial is set up
    model, tok, _ = setup_model(tiny_spec.with_params({"lora.r": 4}))  # trains on CPU here; vLLM is a stand-in
    prompts = ["Say hi.", "Name a colour, one word."]
    settings = GenerationSettings(max_new_tokens=7, batch_size=1, stop=("\n\n",))

    first = gen.generate(model, tok, prompts, settings)
    assert first == [f"n={len(tok(p, add_special_tokens=False)['input_ids'])}" for p in prompts]
    (engine_args,) = fake_vllm.made
    config = model.config.to_dict()
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    planned = estimate_engine(config, spec, longest + 7)  # sized for these prompts and their 7 new tokens
    assert engine_args == {
        "model": resolve_model(spec.model.name),
        "tokenizer": resolve_model(spec.model.name),
        "dtype": "bfloat16",  # compute_dtype auto on a GPU with bf16, as the trial resolves it
        "enable_lora": True,
        "max_lora_rank": 8,  # the smallest rank vLLM takes that holds r = 4
        "max_loras": 1,
        "seed": spec.train.seed,
        "quantization": "bitsandbytes",  # nf4 base: vLLM's in-flight 4-bit
        "gpu_memory_utilization": planned.utilization(GPU_BYTES),  # the engine's own part, not the 0.25 share
        "max_model_len": longest + 7,
        "max_num_seqs": spec.evaluate.batch_size,
        "max_num_batched_tokens": max(longest + 7, spec.evaluate.batch_size),
    }
    assert gen.estimate == planned
    assert 0 < engine_args["gpu_memory_utilization"] < 0.25
    engine = gen._engine()
    call = engine.calls[0]
    assert call["prompts"] == [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    assert call["params"] == {
        "temperature": 0.0,
        "max_tokens": 7,
        "stop": ["\n\n"],
        "include_stop_str_in_output": True,
        "stop_token_ids": [tok.eos_token_id],
        "skip_special_tokens": True,
    }
    lora = call["lora"]
    assert lora.lora_int_id == 1 and "adapter_config.json" in call["files"]
    assert any(f.startswith("adapter_model") for f in call["files"])

    gen.generate(model, tok, prompts, settings)  # same weights: the same request, nothing saved again
    assert engine.calls[1]["lora"] is lora
    with torch.no_grad():  # an optimizer step writes the LoRA weights in place
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.1)
    gen.generate(model, tok, prompts, settings)
    second = engine.calls[2]["lora"]
    assert second.lora_int_id == 2 and second.lora_path != lora.lora_path
    assert not Path(lora.lora_path).exists()  # the older round's adapter folder is gone
    with model.disable_adapter():  # base scores: no adapter at all
        gen.generate(model, tok, prompts, settings)
    assert engine.calls[3]["lora"] is None
    gen.generate(model.get_base_model(), tok, prompts, settings)  # peft put the adapter into its layers: as HF
    assert engine.calls[4]["lora"] is second
    from transformers import AutoModelForCausalLM

    gen.generate(AutoModelForCausalLM.from_pretrained(resolve_model(spec.model.name)), tok, prompts, settings)
    assert engine.calls[5]["lora"] is None  # a plain base model (gridrun compare's "before")
    assert len(fake_vllm.made) == 1  # one engine for the whole trial
    folder = Path(second.lora_path).parent
    gen.close()
    assert not folder.exists()


@pytest.mark.parametrize("share", [1, 0.5])
def test_the_engine_gets_its_own_part_of_the_share_not_the_share(
    fake_vllm: type[FakeLLM], tiny_spec: Any, share: float
) -> None:
    """A whole-GPU trial (gpu: 1) asked vLLM for all of the GPU, which its own model already occupies: vLLM
    refuses to start with less free memory than its fraction. The engine gets its estimate / the GPU's memory."""
    from tests.gridrun_tests.test_memory import QWEN_7B

    over = {"evaluate.backend": "vllm", "resources.gpu": share, "model.quantization": "nf4", "lora.r": 16}
    spec = tiny_spec.with_params({**over, "data.max_seq_len": 1024, "evaluate.max_new_tokens": 256})
    gen = build_generator(spec)
    args = gen.memory_args(QWEN_7B, GPU_BYTES)
    planned = estimate_engine(QWEN_7B, spec)  # no prompts reserved: data.max_seq_len + max_new_tokens
    assert args == {
        "gpu_memory_utilization": planned.utilization(GPU_BYTES),
        "max_model_len": 1024 + 256,
        "max_num_seqs": spec.evaluate.batch_size,
        "max_num_batched_tokens": 1280,
    }
    assert planned.requested <= args["gpu_memory_utilization"] * GPU_BYTES < planned.requested + GPU_BYTES / 10_000
    assert args["gpu_memory_utilization"] < share / 4  # a 4-bit 7B's engine: a small part of the GPU
    gen.close()


def test_max_model_len_is_the_longest_prompt_plus_its_budget_capped_at_the_models_context(
    fake_vllm: type[FakeLLM], tiny_spec: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.gridrun_tests.test_memory import QWEN_05B
    from trainables.qlora_sft import setup_model

    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5, "evaluate.max_new_tokens": 5})
    _, tok, _ = setup_model(tiny_spec)
    prompts = ["a b c", "a much longer prompt than the first one, by some tokens", "x"]
    n = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    gen = build_generator(spec)
    gen.reserve(tok, prompts[:2], 5)  # the eval prompts, as setup_eval reserves them
    gen.reserve(tok, prompts[2:], 40)  # a measure's own (judge), with its own budget
    config = {**QWEN_05B, "max_position_embeddings": 32768}
    assert gen.memory_args(config, GPU_BYTES)["max_model_len"] == max(n[1] + 5, n[2] + 40)
    gen.reserve(tok, ["word " * 600], 5)
    assert gen.memory_args({**config, "max_position_embeddings": 512}, GPU_BYTES)["max_model_len"] == 512
    assert spec.data.max_seq_len + 5 < 605
    caplog.clear()
    with caplog.at_level("WARNING", logger="evaluators.vllm_backend"):
        gen.memory_args(config, GPU_BYTES)  # longer than the share was planned for: said, with both sizes
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["vLLM engine"]
    assert f"longer than the {spec.data.max_seq_len + 5} the trial's GPU share was planned for" in caplog.text
    gen.close()


def test_setup_eval_sizes_the_engine_for_the_trials_eval_prompts(fake_vllm: type[FakeLLM], tiny_spec: Any) -> None:
    from forgetting import Baselines
    from forgetting.probe import ProbeBase
    from trainables.evaluation import setup_eval
    from trainables.qlora_sft import setup_model

    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5})
    model, tok, _ = setup_model(tiny_spec)
    ctx = setup_eval(spec, tok, Baselines({"probe": ProbeBase(1.0)}))
    longest = max(len(tok(e["prompt"], add_special_tokens=False)["input_ids"]) for e in ctx.examples)
    config = model.config.to_dict()
    assert longest + spec.evaluate.max_new_tokens < config["max_position_embeddings"]
    args = ctx.generator.memory_args(config, GPU_BYTES)
    assert args["max_model_len"] == longest + spec.evaluate.max_new_tokens  # not data.max_seq_len's bound
    ctx.generator.close()


def test_an_engine_no_gpu_holds_is_one_line(fake_vllm: type[FakeLLM], tiny_spec: Any) -> None:
    from tests.gridrun_tests.test_memory import QWEN_7B

    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 1, "model.quantization": "none"})
    gen = build_generator(spec)
    with pytest.raises(GridrunError, match=r"^evaluate\.backend: vllm — the engine needs about [\d.]+ GiB \(weights"):
        gen.memory_args(QWEN_7B, 8 * 2**30)
    gen.close()


@pytest.mark.parametrize(
    ("compute_dtype", "bf16", "dtype"),
    [
        ("auto", True, "bfloat16"),  # Ampere and later
        ("auto", False, "float16"),  # pre-Ampere: vLLM's own auto would load a bf16 checkpoint as bf16
        ("float32", False, "float32"),  # what the spec names is kept
        ("float16", True, "float16"),
    ],
)
def test_vllm_gets_the_dtype_the_trial_resolves(
    fake_vllm: type[FakeLLM], tiny_spec: Any, capability: Any, compute_dtype: str, bf16: bool, dtype: str
) -> None:
    from trainables.precision import resolve

    capability(bf16)
    over = {"evaluate.backend": "vllm", "resources.gpu": 0.5, "model.compute_dtype": compute_dtype}
    spec = tiny_spec.with_params(over)
    gen = build_generator(spec)
    assert gen.engine_args["dtype"] == dtype == resolve(spec.model, "cuda").dtype  # the trial's own rule on a GPU
    gen.close()


def test_a_pinned_revision_pins_the_tokenizer_too(fake_vllm: type[FakeLLM], tiny_spec: Any, capability: Any) -> None:
    capability(True)
    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5})
    gen = build_generator(spec)
    assert "revision" not in gen.engine_args and "tokenizer_revision" not in gen.engine_args
    gen.close()
    gen = build_generator(spec.with_params({"model.revision": "a1b2c3"}))
    assert gen.engine_args["revision"] == gen.engine_args["tokenizer_revision"] == "a1b2c3"
    gen.close()


class ShutdownLLM(FakeLLM):
    """A vLLM with ``LLM.shutdown()``."""

    shutdowns: ClassVar[list[str]] = []

    def shutdown(self) -> None:
        ShutdownLLM.shutdowns.append("llm")


class EngineCoreLLM(FakeLLM):
    """A V1 vLLM without ``LLM.shutdown()``: its engine core client has one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        core = types.SimpleNamespace(shutdown=lambda: ShutdownLLM.shutdowns.append("engine_core"))
        self.llm_engine = types.SimpleNamespace(engine_core=core)


class FailingLLM(FakeLLM):
    def shutdown(self) -> None:
        raise RuntimeError("engine core died already")


def _cleanup_module(monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]) -> None:
    """``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``, recording its calls."""
    distributed = types.ModuleType("vllm.distributed")
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.cleanup_dist_env_and_memory = lambda **kw: calls.append(kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.distributed", distributed)
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", state)


@pytest.mark.parametrize(("engine", "shutdown"), [(ShutdownLLM, "llm"), (EngineCoreLLM, "engine_core")])
def test_close_shuts_the_engine_down_frees_it_and_runs_vllms_cleanup_once(
    fake_vllm: type[FakeLLM], tiny_spec: Any, monkeypatch: pytest.MonkeyPatch, engine: type, shutdown: str
) -> None:
    import weakref

    monkeypatch.setattr(sys.modules["vllm"], "LLM", engine)
    cleanups: list[dict[str, Any]] = []
    _cleanup_module(monkeypatch, cleanups)
    ShutdownLLM.shutdowns = []
    gen = build_generator(tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5}))
    alive = weakref.ref(gen._engine())
    folder = gen._dir
    gen.close()
    assert ShutdownLLM.shutdowns == [shutdown]
    assert cleanups == [{"shutdown_ray": False}]  # Ray keeps running: the trial's worker lives in it
    assert alive() is None and not folder.exists()  # no reference keeps the engine: its memory can go
    gen.close()  # twice is fine: nothing more is shut down or cleaned
    assert ShutdownLLM.shutdowns == [shutdown] and len(cleanups) == 1


def test_close_never_raises(
    fake_vllm: type[FakeLLM], tiny_spec: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shutdown that fails is logged, and the cleanup still runs (here vLLM's cleanup is missing: the fallback,
    gc and torch's cache where CUDA is initialized)."""
    monkeypatch.setattr(sys.modules["vllm"], "LLM", FailingLLM)
    gen = build_generator(tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5}))
    gen._engine()
    with caplog.at_level("WARNING", logger="evaluators.vllm_backend"):
        gen.close()
        gen.close()
    assert [r.getMessage() for r in caplog.records] == [
        "vLLM engine release: engine shutdown failed: engine core died already"
    ]
    build_generator(tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5})).close()  # never ran


def test_int8_is_refused_in_one_line(fake_vllm: type[FakeLLM], tiny_spec: Any) -> None:
    spec = tiny_spec.with_params({"evaluate.backend": "vllm", "resources.gpu": 0.5, "model.quantization": "int8"})
    with pytest.raises(GridrunError, match=r"^evaluate\.backend: vllm quantizes a base in flight to 4-bit only"):
        build_generator(spec)


@pytest.mark.gpu
def test_real_vllm_matches_hf_on_the_base_and_serves_the_adapter(tiny_spec: Any) -> None:
    """Greedy completions of the float32 base agree with the HF backend's; the adapter's differ from the base's."""
    pytest.importorskip("vllm")
    import torch

    from evaluators import HFGenerator
    from trainables.evaluation import setup_eval
    from trainables.qlora_sft import setup_model

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    over = {"evaluate.backend": "vllm", "resources.gpu": 0.4, "model.quantization": "none"}
    spec = tiny_spec.with_params(over)
    model, tok, _ = setup_model(spec)
    from forgetting import Baselines
    from forgetting.probe import ProbeBase

    ctx = setup_eval(spec, tok, Baselines({"probe": ProbeBase(1.0)}))
    prompts = [e["prompt"] for e in ctx.examples]
    settings = ctx.evaluators[0].generation
    with model.disable_adapter():
        base = ctx.generator.generate(model, tok, prompts, settings)
        assert base == HFGenerator().generate(model, tok, prompts, settings)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.05)
    adapted = ctx.generator.generate(model, tok, prompts, settings)
    assert adapted != base
    ctx.generator.close()
