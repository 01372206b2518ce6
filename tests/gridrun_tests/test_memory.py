"""The memory estimate: its arithmetic on the published Qwen2.5-0.5B and 7B configs (written here, nothing
downloaded), its terms against the tensors a small random Qwen2 really holds on CPU (weights, adapters, AdamW
state, what autograd keeps, the peak of a training step), the GPU share `auto` picks, validate's refusal, and
the out-of-memory line a trial fails with."""

from __future__ import annotations

import json
import re
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest

from gridrun.errors import GridrunError
from gridrun.gpu_share import allocator_fraction, oom_message
from gridrun.losses import causal_lm_loss
from gridrun.memory import (
    GiB,
    estimate_memory,
    estimate_trial_memory,
    gib,
    loss_bytes,
)
from gridrun.model_config import model_config
from gridrun.model_shape import ModelShape
from gridrun.packing import check_fraction, pick_fraction, resolve_gpu
from gridrun.spec import spec_from_dict, validate_dict
from trainables.precision import autocast, resolved_spec

#: Published configs (config.json of Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-7B-Instruct), the keys that matter.
QWEN_05B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
QWEN_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _spec(**sections: Any):
    return validate_dict({"name": "t", **sections})


# ------------------------------------------------------------------------------------- published configs


def test_parameter_counts_match_the_published_sizes() -> None:
    small, big = ModelShape.from_config(QWEN_05B), ModelShape.from_config(QWEN_7B)
    # by hand: embeddings 151936 x 896; per layer q 896x896+896, k and v 896x128+128, o 896x896,
    # MLP 3 x 896x4864, two norms; the final norm; lm_head tied
    assert small.params() == 151936 * 896 + 24 * (803_712 + 2 * 114_816 + 802_816 + 13_074_432 + 1792) + 896
    assert small.params() == 494_032_768
    assert big.params() == 7_615_616_512  # lm_head untied: the embeddings twice
    assert small.params() == pytest.approx(0.49e9, rel=0.01)  # the model cards: 0.49B and 7.61B
    assert big.params() == pytest.approx(7.61e9, rel=0.01)
    assert small.params() - small.vocab * small.hidden == pytest.approx(0.36e9, rel=0.01)  # non-embedding
    assert big.params() - 2 * big.vocab * big.hidden == pytest.approx(6.53e9, rel=0.01)


@pytest.mark.parametrize(
    ("config", "r", "targets", "expected"),
    [
        (QWEN_05B, 8, ALL, 24 * 8 * (2 * 1792 + 2 * 1024 + 3 * 5760)),  # 4,399,104, as peft prints it
        (QWEN_05B, 8, ["q_proj", "v_proj"], 24 * 8 * (1792 + 1024)),  # 540,672
        (QWEN_7B, 16, ALL, 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528)),  # 40,370,176
        (QWEN_7B, 16, [*ALL, "lm_head"], 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528) + 16 * (3584 + 152064)),
    ],
)
def test_lora_parameters_are_exact(config: dict, r: int, targets: list[str], expected: int) -> None:
    assert ModelShape.from_config(config).lora_params(r, targets) == expected
    est = estimate_trial_memory(config, _spec(lora={"r": r, "target_modules": targets}))
    assert est.lora_params == expected
    assert (est.lora, est.grads, est.optimizer) == (4 * expected, 4 * expected, 8 * expected)  # fp32, AdamW x2


def test_weights_by_quantization_on_the_7b() -> None:
    linear = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)
    floats, bias = 2 * 152064 * 3584 + 57 * 3584, 28 * (3584 + 2 * 512)  # embeddings, lm_head, norms; q/k/v biases
    nf4 = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "nf4", "compute_dtype": "bfloat16"}))
    assert 0.5159 < nf4.weights / linear < 0.5161  # 4 bits + a uint8 absmax per 64 + an fp32 per 256 absmax
    assert nf4.float_weights == 2 * (floats + bias)  # bfloat16: kept as loaded, no k-bit upcast
    fp16 = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "nf4", "compute_dtype": "float16"}))
    assert fp16.float_weights == 4 * floats + 2 * bias  # prepare_model_for_kbit_training upcasts them to fp32
    int8 = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "int8", "compute_dtype": "float16"}))
    assert int8.float_weights == 4 * (floats + bias)
    assert int8.weights == linear + 4 * 28 * (2 * 3584 + 2 * 512 + 2 * 18944 + 3584)  # + an fp32 scale per row
    bf16 = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "none", "compute_dtype": "bfloat16"}))
    assert (bf16.weights, bf16.float_weights) == (2 * linear, 2 * (floats + bias))
    tied = estimate_trial_memory(QWEN_05B, _spec(model={"quantization": "nf4", "compute_dtype": "bfloat16"}))
    assert tied.float_weights == 2 * (151936 * 896 + 49 * 896 + 24 * (896 + 256))  # tied: embeddings once
    auto = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "nf4"}))  # auto: bfloat16 on a GPU
    assert auto == nf4


def test_activations_by_hand_on_the_05b() -> None:
    """nf4 under bfloat16 autocast (a bfloat16 residual stream), every projection adapted with dropout, padded
    micro-batches of 4 x 1024."""
    spec = _spec(
        model={"quantization": "nf4", "compute_dtype": "bfloat16"},
        lora={"r": 8, "dropout": 0.05},
        train={"batch_size": 4, "padding_free": False},
        data={"max_seq_len": 1024},
    )
    h, i, s, t = 896, 4864, 1024, 4 * 1024
    per_layer = (
        2 * (4 * h + 4)  # two RMSNorms: fp32 input, rsqrt
        + 4 * h * 2  # sdpa: q, output, k and v repeated to 14 heads
        + 4 * 14  # logsumexp
        + s * 2  # the additive padding mask
        + 3 * i * 2  # gate, up, silu(gate)
        + 7 * 8 * 2  # lora_B inputs
        + (6 * h + i) * (2 + 1)  # autocast's bfloat16 copies of the dropout outputs, and bool masks
    )
    first = 4 * h + 4 + 3 * h  # layer 0: no norm input, no q/k/v dropout masks (its input needs no gradient)
    casts = 2 * (4_399_104 - 3 * 8 * 896)  # autocast's copies of the adapters, less layer 0's q/k/v lora_A
    est = estimate_trial_memory(QWEN_05B, spec)
    assert est.activations == t * (24 * per_layer - first + 4 * h + 4) + 2 * s * 64 * 2 + casts
    # the chunked loss: the scored rows' gradient (bfloat16) and indices kept; hidden states, rows (bfloat16),
    # int64 ids/mask/labels/targets and 512 positions of log_softmax with two gradients (fp32) while it runs
    scored = t - 4  # each example's last position predicts nothing
    loss = t * (h * 2 + 32) + scored * (h * 2 + 8) + 512 * 151936 * 12
    cached = 2 * 3 * 8 * 896  # autocast's cached copies of layer 0's q/k/v lora_A, alive through the loss
    # one layer's backward: gradients in fp32 where they meet the norms' and peft's casts
    assert est.backward == max(scored * (h * 2 + 16) + loss + cached, t * (3 * i + 3 * h) * 4)
    assert est.backward < t * 151936 * 14 / 5  # a fifth of the bf16 full-sequence logits and their fp32 gradients
    packed = estimate_trial_memory(QWEN_05B, spec.with_params({"train.padding_free": True}))
    mask_growth = t * 24 * (t - s) * 2  # one packed row: its block-causal mask is tokens x tokens
    assert packed.activations - est.activations == mask_growth + 2 * (t - s) * 64 * 2
    checkpointed = estimate_trial_memory(QWEN_05B, spec.with_params({"model.gradient_checkpointing": True}))
    assert checkpointed.activations == t * (24 * h * 2 + 4 * h + 4) + 2 * s * 64 * 2  # layer inputs only
    assert checkpointed.total < est.total


def test_the_search_space_is_estimated_at_its_most_expensive() -> None:
    spec = spec_from_dict(
        {
            "name": "t",
            "search": {
                "space": {
                    "lora.r": {"type": "categorical", "choices": [8, 32, 16]},
                    "train.batch_size": {"type": "int", "low": 1, "high": 4},
                    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3},
                }
            },
        }
    )
    worst = estimate_memory(QWEN_05B, spec)
    assert worst.lora_params == ModelShape.from_config(QWEN_05B).lora_params(32, ALL)
    assert worst.total == estimate_trial_memory(QWEN_05B, spec.with_params({"lora.r": 32, "train.batch_size": 4})).total


def test_a_config_that_is_not_a_dense_decoder_is_named() -> None:
    with pytest.raises(GridrunError, match="cannot estimate memory for this config \\(no intermediate_size\\)"):
        ModelShape.from_config({k: v for k, v in QWEN_05B.items() if k != "intermediate_size"})
    with pytest.raises(GridrunError, match="mixture of experts"):
        ModelShape.from_config({**QWEN_05B, "num_experts": 64})


# ------------------------------------------------------------------------- against real tensors on CPU


@pytest.fixture(scope="module")
def small_qwen(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """A random 3-layer Qwen2 with dimensions that never coincide, and the tiny model's tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("small-qwen")
    config = Qwen2Config(
        vocab_size=1006,
        hidden_size=96,
        intermediate_size=352,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    for f in tiny_model_path.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)
    return out


def _trial(folder: Path, quantization: str = "none", dtype: str = "float32", **over: Any):
    spec = _spec(
        model={"name": str(folder), "quantization": quantization, "compute_dtype": dtype},
        lora={"r": 4},
        train={"batch_size": 3, "padding_free": False},
        data={"max_seq_len": 40},
    )
    spec = spec.with_params(over) if over else spec
    from trainables.qlora_sft import setup_model

    model, tok, _ = setup_model(spec)
    model.train()
    return spec, model, tok, json.loads((folder / "config.json").read_text())


def _act(spec) -> int:
    """The residual stream's bytes per value: fp32 under nf4/int8 with float16/float32 compute (peft upcasts),
    else the compute dtype's (bfloat16 skips the upcast; the spec's dtype is an explicit one here, on CPU)."""
    dtype, quantized = spec.model.compute_dtype, spec.model.quantization != "none"
    return 4 if dtype in ("float32", "auto") or (quantized and dtype != "bfloat16") else 2


def _batch(spec, tok) -> dict:
    """A micro-batch as the trainable collates it: one example shorter (so there is padding), or all of them
    packed into one row of batch x max_seq_len tokens."""
    import torch

    from trainables.data import collate

    torch.manual_seed(1)
    b, s, packed = spec.train.batch_size, spec.data.max_seq_len, spec.train.padding_free is True
    examples = []
    for k in range(b):
        ids = torch.randint(3, 1000, (s - 5 * (k == 0 and not packed),)).tolist()
        examples.append({"input_ids": ids, "labels": ids})
    return collate(examples, tok, packed)


def _storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _state_tensors(model, opt=None) -> list:
    import torch

    out = [*model.parameters(), *model.buffers()]
    for m in model.modules():  # bitsandbytes' 4-bit scales live beside the packed weights
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        for o in (qs, getattr(qs, "state2", None)) if qs is not None else ():
            out += [t for t in vars(o).values() if isinstance(t, torch.Tensor)]
    if opt is not None:
        out += [t for st in opt.state.values() for t in st.values() if t.dim()]
    return out


VARIANTS = [
    ("none", "float32", {}),
    ("none", "float32", {"lora.dropout": 0.0}),
    ("none", "bfloat16", {}),
    ("none", "bfloat16", {"lora.dropout": 0.0}),
    ("nf4", "bfloat16", {}),
    ("none", "float32", {"lora.target_modules": ["q_proj", "v_proj"], "lora.dropout": 0.0}),
    ("none", "float32", {"train.padding_free": True}),
    ("none", "float32", {"model.attn_implementation": "eager"}),
    ("none", "bfloat16", {"model.attn_implementation": "eager"}),
    ("none", "float32", {"model.attn_implementation": "eager", "lora.dropout": 0.0}),
]


@pytest.mark.parametrize(("quantization", "dtype", "over"), VARIANTS)
def test_weights_adapters_and_optimizer_state_are_the_real_tensors(small_qwen, quantization, dtype, over) -> None:
    import torch

    spec, model, tok, config = _trial(small_qwen, quantization, dtype, **over)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with autocast(spec, model):
        loss = model(**_batch(spec, tok), use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    est = estimate_trial_memory(config, spec, device="cpu")
    real = sum(_storages(_state_tensors(model, opt)).values()) - sum(_storages(model.buffers()).values())
    assert real == est.weights + est.float_weights + est.lora + est.optimizer


@pytest.mark.parametrize(("quantization", "dtype", "over"), VARIANTS)
def test_activations_are_what_autograd_keeps(small_qwen, quantization, dtype, over) -> None:
    import torch

    spec, model, tok, config = _trial(small_qwen, quantization, dtype, **over)
    static = _storages(_state_tensors(model))
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in static:
            kept[st.data_ptr()] = st.nbytes()
        return t

    batch = _batch(spec, tok)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(spec, model):
        causal_lm_loss(model, batch)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    loss = loss_bytes(ModelShape.from_config(config), 0, scored, _act(spec))[0]  # the loss's: Estimate.backward's
    kept_by_layers = sum(kept.values()) - loss
    assert abs(kept_by_layers - estimate_trial_memory(config, spec, device="cpu").activations) <= 16  # scalars


class _PeakTracker:
    """Bytes of tensors allocated while active and still alive, and their peak (CPU, any op, backward too)."""

    def __init__(self, skip: set[int]) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                tracker.seen(out)
                return out

        self.mode, self.skip, self.live, self.now, self.peak = Mode(), skip, {}, 0, 0

    def seen(self, out: Any) -> None:
        import torch
        from torch.utils import _pytree as pytree

        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.live and key not in self.skip:
                    self.live[key] = st.nbytes()
                    self.now += st.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(st, self.free, key)

    def free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


@pytest.mark.parametrize(
    ("quantization", "dtype", "over"),
    [*VARIANTS[:5], VARIANTS[8], ("nf4", "bfloat16", {"model.gradient_checkpointing": True})],
)
def test_a_training_step_peaks_where_the_estimate_says(small_qwen, quantization, dtype, over) -> None:
    """Two accumulated micro-batches and an optimizer step, as the trainable runs them: the peak of what they
    allocate is the estimate's training peak (exact; with gradient checkpointing, an upper bound within 15%)."""
    import torch

    spec, model, tok, config = _trial(small_qwen, quantization, dtype, **over)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    with autocast(spec, model):  # as the trainable runs its forwards: the loss chunked
        loss = causal_lm_loss(model, _batch(spec, tok))
    loss.backward()
    opt.step()  # AdamW's state exists from the first step on (the static part, checked above)
    opt.zero_grad(set_to_none=True)
    tracker = _PeakTracker(set(_storages(_state_tensors(model, opt))))
    with tracker.mode:
        for _ in range(2):
            with autocast(spec, model):
                loss = causal_lm_loss(model, _batch(spec, tok))  # as the trainable computes it: chunked
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    est = estimate_trial_memory(config, spec, device="cpu")
    # the estimate scores every position but each example's last; the padded example here scores 5 fewer
    shape, tokens, act = ModelShape.from_config(config), spec.train.batch_size * spec.data.max_seq_len, _act(spec)
    scored = int((_batch(spec, tok)["labels"][:, 1:] != -100).sum())
    unscored = sum(loss_bytes(shape, tokens, tokens - spec.train.batch_size, act))
    unscored -= sum(loss_bytes(shape, tokens, scored, act))
    if spec.model.gradient_checkpointing:
        assert tracker.peak <= est.train < 1.15 * tracker.peak
    else:
        assert abs(tracker.peak - (est.train - unscored)) <= 16  # the loss scalars
        assert unscored < 0.1 * est.train


def test_the_trial_reports_its_estimate_next_to_its_peak(tiny_spec) -> None:
    from forgetting import Baselines, ProbeBase
    from trainables.qlora_sft import run

    reports: list[dict] = []
    run(tiny_spec, Baselines({"probe": ProbeBase(3.0)}), lambda m, d: reports.append(m), max_steps=4)
    config = model_config(tiny_spec)
    assert config is not None
    # the trial estimates what it computes in: auto resolved on its device (float32 on this CPU)
    expected = estimate_trial_memory(config, resolved_spec(tiny_spec, "cpu")).allocated / 2**20
    assert reports and all(r["perf/mem_estimate_mb"] == pytest.approx(expected) for r in reports)
    assert all(r["perf/peak_mem_mb"] > 0 for r in reports)


# ---------------------------------------------------------------------------------- shares of a GPU


@pytest.mark.parametrize(
    ("needed_gib", "expected"),
    [(1.0, 0.125), (8.2, 0.125), (8.4, 0.1429), (16.2, 0.25), (17.9, 0.3333), (26.7, 0.5), (60.0, 1.0), (79.0, 1.0)],
)
def test_auto_picks_the_smallest_share_with_headroom(needed_gib: float, expected: float) -> None:
    assert pick_fraction(int(needed_gib * GiB), 80 * GiB) == expected  # share >= needed x 1.2; or all of it


def test_auto_refuses_a_trial_no_whole_gpu_holds() -> None:
    with pytest.raises(GridrunError, match=re.escape("needs about 90.0 GiB, more than a whole 80.0 GiB GPU")):
        pick_fraction(90 * GiB, 80 * GiB)


def test_a_share_that_does_not_fit_is_refused_with_the_numbers() -> None:
    est = estimate_trial_memory(QWEN_7B, _spec(model={"quantization": "nf4", "compute_dtype": "bfloat16"}))
    check_fraction(1.0, 80 * GiB, est)
    with pytest.raises(GridrunError) as e:
        check_fraction(0.125, 80 * GiB, est)
    line = str(e.value)
    assert line.startswith(
        f"resources.gpu: 0.125 of a 80.0 GiB GPU is 10.0 GiB; a trial needs about {est.total / GiB:.1f}"
    )
    assert "weights 3.1, embeddings/norms 2.0" in line and "CUDA context 0.5" in line and "\n" not in line


def test_the_allocator_cap_leaves_room_for_each_trials_cuda_context() -> None:
    cap = allocator_fraction(0.25, 80 * GiB)
    assert cap == pytest.approx((20 * GiB - 512 * 2**20) / (80 * GiB))
    assert 4 * (cap * 80 * GiB + 512 * 2**20) == pytest.approx(80 * GiB)  # four trials and contexts fill it


def test_resolve_gpu() -> None:
    auto = _spec(resources={"gpu": "auto"}, model={"name": "x", "quantization": "nf4", "compute_dtype": "bfloat16"})
    gpu, line = resolve_gpu(auto, QWEN_7B, None, 0)  # no GPU: CPU trials, said once
    assert gpu == 0.0 and line == "resources.gpu: auto — no GPU here: trials run on CPU (gpu 0)"
    fp16 = auto.with_params({"model.compute_dtype": "float16"})
    with pytest.raises(GridrunError, match="float16 4/8-bit matmuls need a GPU"):
        resolve_gpu(fp16, QWEN_7B, None, 0)
    gpu, line = resolve_gpu(auto, QWEN_05B, 80 * GiB, 1)
    assert gpu == pick_fraction(estimate_memory(QWEN_05B, auto).total, 80 * GiB)
    assert line and line.startswith(f"resources.gpu: auto → {gpu:g} of a 80.0 GiB GPU")
    with pytest.raises(GridrunError, match=re.escape("set resources.gpu_memory_gb")):
        resolve_gpu(auto, QWEN_05B, None, 1)
    with pytest.raises(GridrunError, match="auto needs the config of x"):
        resolve_gpu(auto, None, 80 * GiB, 1)
    fixed = auto.with_params({"resources.gpu": 0.125})
    assert resolve_gpu(fixed, QWEN_7B, None, 1) == (0.125, None)  # the GPU's size unknown: nothing to check
    with pytest.raises(GridrunError, match=re.escape("resources.gpu: 0.125 of a 80.0 GiB GPU is 10.0 GiB")):
        resolve_gpu(fixed, QWEN_7B, 80 * GiB, 1)


def test_launch_resolves_auto_to_cpu_trials_without_gpus(tiny_spec) -> None:
    from gridrun.launch import _concurrency, _resolve_gpu

    spec = tiny_spec.with_params({"resources.gpu": "auto"})
    resolved, trial = _resolve_gpu(spec, spec, {"CPU": 2.0})
    assert resolved.resources.gpu == 0.0 and trial.resources.gpu == 0.0
    assert _concurrency(resolved, {"CPU": 2.0}) == 2


def test_oom_line_names_the_share_the_estimate_and_the_peak(tiny_spec) -> None:
    from trainables.gpu_memory import oom_error

    spec = tiny_spec.with_params({"resources.gpu": 0.25})
    torch_says = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
    err = oom_error(spec, torch_says, 80 * GiB, int(19.5 * GiB))
    line = str(err)
    assert line.startswith("resources.gpu: the trial ran out of its share of the GPU, 0.25 of 80.0 GiB = 20.0 GiB")
    estimate = estimate_trial_memory(model_config(spec) or {}, spec).total
    assert f"(training estimated {gib(estimate)} GiB, measured peak 19.5 GiB; Tried to allocate 2.00 GiB)" in line
    assert oom_message(0.5, 80 * GiB, None, 0).count("no estimate") == 1
    line = oom_message(0.25, 80 * GiB, 10 * GiB, 11 * GiB, beside=8 * GiB)
    assert "= 20.0 GiB, 8.0 GiB of it the vLLM engine's (training estimated 10.0 GiB, measured peak 11.0" in line


def test_a_vllm_engine_in_its_own_process_is_left_out_of_the_trials_allocator_cap(monkeypatch) -> None:
    from gridrun.gpu_share import engine_beside
    from gridrun.vllm_memory import estimate_engine_memory

    config = {**QWEN_7B, "max_position_embeddings": 32768}
    hf = _spec(model={"quantization": "nf4"}, evaluate={"batch_size": 16}, resources={"gpu": 0.25})
    vllm = hf.with_params({"evaluate.backend": "vllm"})
    engine = estimate_engine_memory(config, vllm)
    assert engine is not None and engine.total > 4 * GiB
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # vLLM's default: the engine core apart
    assert engine_beside(config, vllm) == engine.total
    assert allocator_fraction(0.25, 80 * GiB, engine.total) * 80 * GiB == pytest.approx(
        20 * GiB - 512 * 2**20 - engine.total
    )
    assert engine_beside(config, hf) == 0  # HF generates inside the capped process
    assert engine_beside(None, vllm) == 0  # no config, no estimate: as the share was planned
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in the trial's process: its allocator's
    assert engine_beside(config, vllm) == 0


# ----------------------------------------------------------------------------------------- validate


def test_model_config_offline(tmp_path: Path) -> None:
    assert (model_config(_spec()) or {})["hidden_size"] == 128  # builtin:tiny-general
    (tmp_path / "config.json").write_text(json.dumps(QWEN_7B))
    assert model_config(_spec(model={"name": str(tmp_path)})) == QWEN_7B
    assert model_config(_spec(model={"name": "nobody/not-a-model-xyz"})) is None  # hub id, not cached: unknown


def test_validate_refuses_a_packing_that_cannot_fit(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    folder = tmp_path / "qwen2.5-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN_7B, "architectures": ["Qwen2ForCausalLM"]}))
    squad = Path(__file__).resolve().parents[2] / "search_spaces" / "qwen2.5-7b-instruct" / "squad.yaml"
    args = ["validate", str(squad), "--set", f"model.name={folder}", "--set", "resources.gpu_memory_gb=80"]
    ok = run_cli(*args, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "memory: a trial needs about" in ok.stdout and "gpu: 0.5 of a 80.0 GiB GPU is 40.0 GiB" in ok.stdout
    refused = run_cli(*args, "--set", "resources.gpu=0.125", cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "resources.gpu: 0.125 of a 80.0 GiB GPU is 10.0 GiB; a trial needs about" in lines[0]
    auto = run_cli(*args, "--set", "resources.gpu=auto", cwd=tmp_path)
    assert auto.returncode == 0 and "gpu: auto takes 0.1667 of a 80.0 GiB GPU" in auto.stdout


def test_json_format_header_states_gridruns_own_estimate() -> None:
    """The real json_format YAML's header gives the memory a trial needs: gridrun's estimate, not a guess."""
    import re

    path = Path(__file__).resolve().parents[2] / "search_spaces" / "qwen2.5-0.5b-instruct" / "json_format.yaml"
    from gridrun.spec import load_spec

    header = "".join(ln for ln in path.read_text().splitlines() if ln.startswith("#"))
    stated = float(re.search(r"gridrun's estimate: ([\d.]+) GiB", header).group(1))
    assert stated == round(estimate_memory(QWEN_05B, load_spec(path)).total / GiB, 1)
