"""The vLLM engine's memory (``evaluate.backend: vllm``): its estimate on the published Qwen2.5 configs by hand, the
share ``gpu: auto`` picks for training plus engine, and validate's one-line refusal of a share too small for both."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gridrun.errors import GridrunError
from gridrun.memory import GiB, estimate_memory, estimate_trial_memory, gib
from gridrun.packing import check_fraction, pick_fraction, resolve_gpu, share_needed, trial_need
from gridrun.spec import load_spec
from gridrun.vllm_memory import CUDA_GRAPH_BYTES, estimate_engine, estimate_engine_memory
from tests.gridrun_tests.test_memory import QWEN_05B, QWEN_7B, _spec

#: Both published configs give a context of 32768 tokens (``max_position_embeddings``).
Q05 = {**QWEN_05B, "max_position_embeddings": 32768}
Q7 = {**QWEN_7B, "max_position_embeddings": 32768}
VLLM = {"backend": "vllm", "batch_size": 16, "max_new_tokens": 256}


def test_the_7b_nf4_engine_by_hand() -> None:
    spec = _spec(model={"quantization": "nf4"}, lora={"r": 12}, data={"max_seq_len": 1000}, evaluate=VLLM)
    est = estimate_engine(Q7, spec)
    # every projection's elements n: nf4 codes n/2, an fp32 absmax per 64 (vLLM undoes the double quantization),
    # the 64-byte code table; all of the 7B's n are multiples of 64
    n = 2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944
    assert est.weights == 28 * (n // 2 + 4 * n // 64 + 7 * 64) == 3_670_487_296
    assert est.float_weights == 2 * (2 * 152064 * 3584 + 57 * 3584 + 28 * (3584 + 2 * 512))  # bf16, untied, biases
    assert est.max_model_len == 1000 + 256 and est.max_num_seqs == 16 and est.max_num_batched_tokens == 1256
    blocks = math.ceil(1256 / 16) * 16  # whole blocks of 16 tokens: 1264
    assert est.kv_cache == 16 * blocks * 28 * 2 * 4 * 128 * 2  # K and V, 4 KV heads of 128, bf16
    # one LoRA slot at rank 16 (the smallest vLLM takes above 12) on every projection, bf16
    assert est.lora == 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528) * 2
    forward = 1256 * ((4 * 18944 + 6 * 3584) * 2 + 3 * 16 * 4) + 2 * 18944 * 3584 * 2  # + a dequantized gate_up
    assert est.activations == forward + 16 * 152064 * (2 + 8)  # the sampler's logits, fp32 copy, probabilities
    assert est.graphs == CUDA_GRAPH_BYTES == GiB
    assert est.requested == est.total - 512 * 2**20  # the engine process's CUDA context is outside its fraction
    terms = est.weights + est.float_weights + est.kv_cache + est.lora + est.activations + est.graphs
    assert est.requested == terms and gib(est.total) == "8.6"
    assert est.utilization(80 * GiB) == 0.1014  # rounded up: 0.10135 of an 80 GiB GPU


def test_the_05b_bf16_engine_by_hand_and_the_models_context_caps_it() -> None:
    spec = _spec(model={"quantization": "none"}, data={"max_seq_len": 40000}, evaluate={**VLLM, "batch_size": 4})
    est = estimate_engine(Q05, spec)
    assert est.weights == 2 * 24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)
    assert est.float_weights == 2 * (151936 * 896 + 49 * 896 + 24 * (896 + 256))  # tied: the embeddings once
    assert est.max_model_len == 32768  # not 40256: the model's own context
    assert est.kv_cache == 4 * 32768 * 24 * 2 * 2 * 64 * 2
    assert est.lora == 24 * 8 * (2 * 1792 + 2 * 1024 + 3 * 5760) * 2  # rank 8 slot
    assert est.activations == 32768 * ((4 * 4864 + 6 * 896) * 2 + 3 * 8 * 4) + 4 * 151936 * 10
    float32 = estimate_engine(Q05, spec.with_params({"model.compute_dtype": "float32"}))
    assert float32.weights == 2 * est.weights and float32.kv_cache == 2 * est.kv_cache
    assert estimate_engine(Q05, spec, tokens=700).max_model_len == 700  # the trial's own prompts, when known


def test_training_estimates_are_unchanged_for_hf_and_lose_only_generation_with_vllm() -> None:
    hf = _spec(model={"quantization": "nf4"}, evaluate={k: v for k, v in VLLM.items() if k != "backend"})
    assert estimate_engine_memory(Q7, hf) is None
    vllm = hf.with_params({"evaluate.backend": "vllm"})
    a, b = estimate_trial_memory(Q7, hf), estimate_trial_memory(Q7, vllm)
    assert a.eval_kind == "generation" and b.eval_kind != "generation"  # vLLM generates, in its own memory
    assert (a.weights, a.float_weights, a.lora, a.optimizer, a.train) == (
        b.weights,
        b.float_weights,
        b.lora,
        b.optimizer,
        b.train,
    )


def test_the_judges_answers_are_planned_for_with_their_own_budget() -> None:
    """The judge measure generates answers of up to its own ``max_new_tokens`` (256 unless set): the engine's
    context and the HF generation step are planned for the longer of its budget and the task's."""
    judge = {"url": "http://127.0.0.1:9/v1", "model": "judge"}
    data, ev = {"max_seq_len": 1000}, {**VLLM, "max_new_tokens": 64}

    def spec(options: dict | None, backend: str = "vllm"):
        forgetting = {"measures": ["judge"], "options": {"judge": options}} if options is not None else {}
        return _spec(data=data, evaluate={**ev, "backend": backend}, forgetting=forgetting)

    assert estimate_engine(Q7, spec(None)).max_model_len == 1000 + 64  # the task's budget alone
    assert estimate_engine(Q7, spec(judge)).max_model_len == 1000 + 256  # the judge's default, unset
    assert estimate_engine(Q7, spec({**judge, "max_new_tokens": 600})).max_model_len == 1000 + 600
    assert estimate_engine(Q7, spec({**judge, "max_new_tokens": 32})).max_model_len == 1000 + 64  # the larger one
    assert estimate_engine(Q7, spec(judge), tokens=700).max_model_len == 700  # the trial's reserved prompts win
    # the HF backend generates the judge's answers in the trial's own memory: a KV cache for 1000 + 600 tokens
    hf_task, hf_judge = spec(None, "hf"), spec({**judge, "max_new_tokens": 600}, "hf")
    a, b = estimate_trial_memory(Q7, hf_task), estimate_trial_memory(Q7, hf_judge)
    assert (a.eval_kind, b.eval_kind) == ("generation", "judge")
    kv = 28 * 2 * 4 * 128 * 2  # one token's K and V in every layer, bf16 (compute_dtype auto on a GPU)
    mask = 1000 * 2  # one prompt token's row of the additive padding mask, per generated position
    assert b.eval - a.eval == 16 * (600 - 64) * (kv + mask)


def test_the_search_space_is_planned_at_its_most_expensive_engine() -> None:
    space = {
        "evaluate.batch_size": {"type": "int", "low": 4, "high": 64},
        "lora.r": {"type": "categorical", "choices": [8, 64]},
    }
    spec = _spec(evaluate=VLLM, search={"space": space})
    worst = estimate_engine_memory(Q7, spec)
    assert worst == estimate_engine(Q7, spec.with_params({"evaluate.batch_size": 64, "lora.r": 64}))


def test_auto_packs_training_and_engine() -> None:
    spec = _spec(model={"name": "x", "quantization": "none"}, resources={"gpu": "auto"}, evaluate=VLLM)
    est, engine = trial_need(Q7, spec)
    assert engine is not None and est == estimate_memory(Q7, spec)
    gpu, line = resolve_gpu(spec, Q7, 80 * GiB, 1)
    assert gpu == pick_fraction(est.total + engine.total, 80 * GiB) == 1.0  # 1/2 held the training alone
    assert pick_fraction(est.total, 80 * GiB) == 0.5 and gpu * 80 * GiB >= est.total + engine.total
    assert line and f"training {gib(est.total)} GiB (" in line and f"+ vLLM engine {gib(engine.total)} GiB (" in line
    nf4 = spec.with_params({"model.quantization": "nf4"})
    est, engine = trial_need(Q7, nf4)
    assert engine is not None
    share = resolve_gpu(nf4, Q7, 80 * GiB, 1)[0]
    assert share * 80 * GiB >= 1.2 * (est.total + engine.total) and share < 1  # with HEADROOM, and still shared


def test_an_explicit_share_must_hold_both_parts() -> None:
    model = {"quantization": "nf4", "gradient_checkpointing": True}
    spec = _spec(model=model, train={"batch_size": 2}, evaluate=VLLM, data={"max_seq_len": 1024})
    est, engine = trial_need(Q7, spec)
    assert engine is not None
    check_fraction(1, 80 * GiB, est, engine)  # a whole GPU: training and its engine both start
    check_fraction(est.total / (80 * GiB) + 0.01, 80 * GiB, est)  # the training alone fits that share ...
    with pytest.raises(GridrunError) as e:  # ... not with its engine beside it
        check_fraction(est.total / (80 * GiB) + 0.01, 80 * GiB, est, engine)
    line = str(e.value)
    need = est.total + engine.total
    assert "\n" not in line and line.startswith("resources.gpu: 0.")
    assert f"a trial needs about {gib(need)} GiB: training {gib(est.total)} GiB (" in line
    assert f"+ vLLM engine {gib(engine.total)} GiB (weights " in line
    assert f"a share of at least {share_needed(need, 80 * GiB):g};" in line
    assert share_needed(need, 80 * GiB) * 80 * GiB >= need > (share_needed(need, 80 * GiB) - 0.01) * 80 * GiB


def test_validate_refuses_a_share_too_small_for_training_and_engine(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "qwen2.5-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**Q7, "architectures": ["Qwen2ForCausalLM"]}))
    standin = tmp_path / "standin" / "vllm"  # validate finds vLLM installed (it imports nothing of it)
    standin.mkdir(parents=True)
    (standin / "__init__.py").write_text("")
    root = Path(__file__).resolve().parents[2]
    squad = root / "search_spaces" / "qwen2.5-7b-instruct" / "squad.yaml"
    sets = [f"model.name={folder}", "resources.gpu_memory_gb=80", "evaluate.backend=vllm", "resources.gpu=0.125"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(standin.parent)])}
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run(
        [sys.executable, "-m", "gridrun.cli", "validate", str(squad), *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    spec = load_spec(squad, sets)
    est, engine = trial_need(Q7, spec)
    assert engine is not None
    need = est.total + engine.total
    assert est.total <= 10 * GiB < need  # the training alone fits its eighth of the GPU; with its engine, not
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        rf"gridrun: error: resources\.gpu: 0\.125 of a 80\.0 GiB GPU is 10\.0 GiB; "
        rf"a trial needs about {gib(need)} GiB: "
        rf"training {gib(est.total)} GiB \(.*\) \+ vLLM engine {gib(engine.total)} GiB \(.*\), "
        rf"a share of at least {share_needed(need, 80 * GiB):g}; use gpu: auto, a larger fraction, or smaller batches",
        lines[0],
    )
