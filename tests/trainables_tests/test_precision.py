"""Mixed precision, the attention kernel and gradient checkpointing: what ``auto`` picks per device and GPU
capability, autocast really running the trainable's step, float16's GradScaler, the kernel reaching the model,
the varlen arguments of padding-free rows, and checkpointing without torch's use_reentrant warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from gridrun.errors import GridrunError
from gridrun.precision import bf16_supported, resolve_attn, resolve_dtype
from gridrun.spec import validate_dict
from trainables import precision


def _model(**model):
    return validate_dict({"name": "t", "model": model}).model


@pytest.fixture
def capability(monkeypatch):
    """Set what torch says about bf16 support and whether flash_attn is importable."""

    def set_(bf16: bool, flash: bool = False) -> None:
        # torch's default (emulation included) says yes on any CUDA GPU: only the native answer counts
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation
        )
        monkeypatch.setattr("gridrun.precision.flash_attn_installed", lambda: flash)
        monkeypatch.setattr("gridrun.precision.cuda_capability", lambda: (8, 0) if bf16 else (7, 5))  # A100, T4
        bf16_supported.cache_clear()

    yield set_
    bf16_supported.cache_clear()


@pytest.mark.parametrize(
    ("device", "bf16", "flash", "dtype", "attn"),
    [
        ("cuda", True, False, "bfloat16", "sdpa"),  # Ampere and later
        ("cuda", False, False, "float16", "sdpa"),  # pre-Ampere: no bf16
        ("cuda", True, True, "bfloat16", "flash_attention_2"),
        ("cuda", False, True, "float16", "sdpa"),  # pre-Ampere: FlashAttention-2 has no kernels there
        ("cpu", True, True, "float32", "sdpa"),  # CPU trials compute as before, no flash kernels
    ],
)
def test_auto_picks_per_device_and_capability(capability, device, bf16, flash, dtype, attn) -> None:
    capability(bf16, flash)
    assert precision.resolve(_model(), device) == precision.Precision(dtype, attn)
    assert precision.resolve(_model(), device).autocast == (dtype != "float32")


def test_explicit_values_are_kept() -> None:
    m = _model(compute_dtype="float16", attn_implementation="eager")
    assert resolve_dtype(m, "cpu") == "float16" and resolve_attn(m, "cuda", "float16") == "eager"
    assert resolve_attn(_model(compute_dtype="float32"), "cuda", "float32") == "sdpa"  # flash has no fp32 kernels


def test_bad_values_are_one_line(capability, tmp_path) -> None:
    with pytest.raises(GridrunError, match=r"^model.compute_dtype: .*'auto', 'float32', 'bfloat16' or 'float16'"):
        validate_dict({"name": "t", "model": {"compute_dtype": "fp8"}})
    with pytest.raises(GridrunError, match=r"^model.attn_implementation: "):
        validate_dict({"name": "t", "model": {"attn_implementation": "flash3"}})
    capability(True, flash=False)
    flash = _model(attn_implementation="flash_attention_2", compute_dtype="bfloat16")
    with pytest.raises(GridrunError) as e:
        precision.resolve(flash, "cuda")
    assert str(e.value).startswith("model.attn_implementation: flash_attention_2 needs the flash_attn package")
    assert "\n" not in str(e.value)
    capability(True, flash=True)
    with pytest.raises(GridrunError, match="flash_attention_2 runs on a GPU only"):
        precision.resolve(flash, "cpu")
    with pytest.raises(GridrunError, match="needs compute_dtype bfloat16 or float16"):
        precision.resolve(_model(attn_implementation="flash_attention_2", compute_dtype="float32"), "cuda")
    capability(False, flash=True)  # a T4: float16, and no FlashAttention-2 kernels
    with pytest.raises(GridrunError) as e:
        precision.resolve(_model(attn_implementation="flash_attention_2"), "cuda")
    assert str(e.value) == (
        "model.attn_implementation: flash_attention_2 runs on Ampere or newer GPUs (compute capability 8.0+); "
        "this GPU is 7.5: use sdpa (or auto)"
    )


def test_validate_refuses_flash_attention_without_flash_attn(tiny_spec, capability) -> None:
    from gridrun.validate import check_spec

    capability(True, flash=False)
    spec = tiny_spec.with_params({"model.attn_implementation": "flash_attention_2"})
    with pytest.raises(GridrunError, match=r"^model.attn_implementation: flash_attention_2 needs the flash_attn"):
        check_spec(spec)


# ------------------------------------------------------------------------------------------- the model


def test_the_kernel_reaches_the_model_config(tiny_spec) -> None:
    from trainables.qlora_sft import setup_model

    auto, _, device = setup_model(tiny_spec.with_params({"model.quantization": "none"}))
    assert device == "cpu" and auto.config._attn_implementation == "sdpa"
    eager, _, _ = setup_model(
        tiny_spec.with_params({"model.quantization": "none", "model.attn_implementation": "eager"})
    )
    assert eager.config._attn_implementation == "eager"


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_checkpointing_is_non_reentrant_without_warnings(tiny_spec, quantization) -> None:
    """transformers' current API with use_reentrant=False: no torch warning, no transformers deprecation (peft's
    k-bit preparation no longer enables it the deprecated way), and the layers really checkpoint."""
    from transformers import modeling_utils

    from trainables.data import collate
    from trainables.qlora_sft import setup_model

    spec = tiny_spec.with_params({"model.quantization": quantization, "model.gradient_checkpointing": True})
    calls: list[dict] = []
    real = modeling_utils.checkpoint  # what transformers wraps in its checkpointing function

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    with warnings.catch_warnings(record=True) as caught, pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("always")
        mp.setattr(modeling_utils, "checkpoint", spy)
        model, tok, _ = setup_model(spec)
        model.train()
        batch = collate([{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}], tok)
        model(**batch, use_cache=False).loss.backward()
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "use_reentrant" in t or "gradient_checkpointing_enable" in t], texts
    assert calls and all(c.get("use_reentrant") is False for c in calls)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_bfloat16_keeps_the_base_as_loaded_and_the_adapters_in_float32(tiny_spec) -> None:
    """Under bfloat16 the k-bit preparation's upcast is skipped (the residual stream computes in 16 bits); float16
    keeps it; LoRA weights stay float32 in both."""
    from trainables.qlora_sft import setup_model

    for dtype, embed in (("bfloat16", torch.bfloat16), ("float16", torch.float32)):
        model, _, _ = setup_model(tiny_spec.with_params({"model.compute_dtype": dtype}))
        assert model.get_input_embeddings().weight.dtype == embed, dtype
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_the_training_step_runs_under_autocast(tiny_spec, tiny_model_path) -> None:
    """bfloat16 on CPU (CPU autocast has it): the trainable's own step computes the projections, base and
    adapter, in bfloat16 while the adapter's weights and their gradients stay float32."""
    import importlib

    from forgetting import Baselines, ProbeBase

    qlora_sft = importlib.import_module("trainables.qlora_sft")  # the module (the package exports its function)

    spec = tiny_spec.with_params({"model.quantization": "none", "model.compute_dtype": "bfloat16"})
    seen: dict[str, set] = {"base": set(), "lora": set(), "grad": set()}
    real_setup = qlora_sft.setup_model

    def setup(s):
        model, tok, device = real_setup(s)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj

        def hook(module, args, out) -> None:
            if module.training and torch.is_grad_enabled():  # training forwards, not the eval round's
                seen["base" if module is layer.base_layer else "lora"].add(out.dtype)

        layer.base_layer.register_forward_hook(hook)
        layer.lora_A["default"].register_forward_hook(hook)
        layer.lora_A["default"].weight.register_hook(lambda g: seen["grad"].add(g.dtype))
        return model, tok, device

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qlora_sft, "setup_model", setup)
        qlora_sft.run(spec, Baselines({"probe": ProbeBase(3.0)}), lambda m, d: None, max_steps=1)
    assert seen == {"base": {torch.bfloat16}, "lora": {torch.bfloat16}, "grad": {torch.float32}}


# -------------------------------------------------------------------------------------------- float16


def _scaled_step(scaler, opt, params, grad: float) -> bool:
    loss = (params[0] * grad).sum()
    scaler.scale(loss).backward()
    stepped = precision.optimizer_step(opt, scaler, params, max_grad_norm=1.0)
    opt.zero_grad(set_to_none=True)
    return stepped


def test_grad_scaler_unscales_clips_and_skips_an_inf_step() -> None:
    """A real GradScaler (CPU): gradients unscaled before clipping, so the clipped step equals an unscaled
    one's; a step with an inf in the scaled gradients is skipped (weights untouched, the scale halved) and
    reported as skipped, not as a diverged loss."""
    w = torch.nn.Parameter(torch.ones(4))
    ref = torch.nn.Parameter(torch.ones(4))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt, ref_opt = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([ref], lr=0.1)
    assert _scaled_step(scaler, opt, [w], 3.0)
    (ref * 3.0).sum().backward()
    torch.nn.utils.clip_grad_norm_([ref], 1.0)
    ref_opt.step()
    assert torch.equal(w.detach(), ref.detach())
    before, scale = w.detach().clone(), scaler.get_scale()
    assert not _scaled_step(scaler, opt, [w], float("inf"))
    assert torch.equal(w.detach(), before) and scaler.get_scale() == scale / 2
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert _scaled_step(disabled, opt, [w], 1.0) and not torch.equal(w.detach(), before)


def test_grad_scaler_only_for_float16_and_checkpointed(tiny_spec, tmp_path) -> None:
    from trainables import state
    from trainables.qlora_sft import setup_model

    assert not precision.grad_scaler(tiny_spec.with_params({"model.compute_dtype": "bfloat16"}), "cpu").is_enabled()
    assert not precision.grad_scaler(tiny_spec, "cpu").is_enabled()  # auto on CPU: float32
    spec = tiny_spec.with_params({"model.compute_dtype": "float16", "model.quantization": "none"})
    scaler = precision.grad_scaler(spec, "cpu")
    assert scaler.is_enabled()
    model, _, _ = setup_model(spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler.scale(torch.ones(()))  # the scale exists from the first scaled loss on
    scaler.update(1234.0)
    state.save(tmp_path, model, opt, sched, state.Position(1, 8), spec, {}, scaler)
    restored = precision.grad_scaler(spec, "cpu")
    state.load(tmp_path, model, opt, sched, restored)
    assert restored.get_scale() == 1234.0


# ------------------------------------------------------------------------------------- padding-free rows


def test_padding_free_rows_carry_flash_attentions_varlen_arguments(tiny_model_path) -> None:
    from transformers import AutoTokenizer

    from trainables.data import collate

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = [{"input_ids": list(range(3, 3 + n)), "labels": list(range(3, 3 + n))} for n in (5, 2, 7)]
    plain = collate(rows, tok, padding_free=True)
    varlen = collate(rows, tok, padding_free=True, varlen=True)
    assert "cu_seq_lens_q" not in plain and torch.equal(plain["position_ids"], varlen["position_ids"])
    assert varlen["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 4, 5, 6]]
    assert varlen["cu_seq_lens_q"].tolist() == varlen["cu_seq_lens_k"].tolist() == [0, 5, 7, 14]
    assert varlen["max_length_q"] == varlen["max_length_k"] == 7


def test_float16_trial_skips_overflowing_steps_without_stopping(tiny_spec, tiny_model_path) -> None:
    """The trainable's float16 loop (CPU autocast has float16) with a real GradScaler started at a scale its
    gradients overflow at (2^16 does not): those steps are skipped and the learning-rate schedule waits for them,
    the loss stays finite (no non-finite-loss stop), and the trial trains on once the scale has come down."""
    import importlib
    import math

    from forgetting import Baselines, ProbeBase
    from gridrun.stopping import NonFiniteLoss
    from trainables.qlora_sft import lr_schedule

    qlora_sft = importlib.import_module("trainables.qlora_sft")
    spec = tiny_spec.with_params(
        {
            "model.quantization": "none",
            "model.compute_dtype": "float16",
            "train.eval_every": 4,
            "train.epochs": 2,
            "data.eval_size": 2,  # float16 on CPU is slow: a small eval round
            "evaluate.max_new_tokens": 4,
            "forgetting.samples": 2,
        }
    )
    scalers: list = []
    steps: list[bool] = []

    def scaler(s, device):
        scalers.append(torch.amp.GradScaler(device, init_scale=2.0**20))
        return scalers[-1]

    def step(*args, **kwargs):
        steps.append(precision.optimizer_step(*args, **kwargs))
        return steps[-1]

    reports: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qlora_sft, "grad_scaler", scaler)
        mp.setattr(qlora_sft, "optimizer_step", step)
        qlora_sft.run(spec, Baselines({"probe": ProbeBase(3.0)}), lambda m, d: reports.append(m), max_steps=4)
    assert len(steps) == 4 and not steps[0] and any(steps)  # skipped at 2^20, taken once the scale came down
    assert scalers[0].get_scale() < 2.0**20
    # the report's learning rate is the schedule after the steps taken, the skipped ones not counted
    total = 2 * 64 // spec.train.batch_size

    def lr_after(n: int) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=spec.train.lr)
        sched = lr_schedule(opt, spec.train.lr_scheduler, int(spec.train.warmup_ratio * total), total)
        for _ in range(n):
            opt.step()  # no gradients: nothing moves, and torch sees the order it expects
            sched.step()
        return float(sched.get_last_lr()[0])

    assert reports[0]["train/lr"] == pytest.approx(lr_after(sum(steps))) != pytest.approx(lr_after(4))
    reasons: dict[str, str] = {}
    assert all(math.isfinite(r["train/loss"]) for r in reports)
    assert not any(NonFiniteLoss(reasons)("t", r) for r in reports) and len(reports) == 1
