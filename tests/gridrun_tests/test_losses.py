"""Chunked losses (gridrun/losses.py) against the plain full-logits computation: per-token log-likelihoods, summed
NLL, forward KL and the training loss with its gradients, on small random Qwen2 models with LoRA (float32 with an
untied head that LoRA adapts too; nf4 with tied embeddings, as trials load it), chunk sizes that do not divide the
number of scored positions, right padding and padding-free packed rows."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from gridrun.losses import causal_lm_loss, forward_kl_sum, nll_sum, shift_targets, target_logprobs

CHUNKS = [1, 7, 512]  # one position at a time, a chunk that divides nothing here, everything in one chunk


def _config(tied: bool) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=1006,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
    )


def _trained(model: Any) -> Any:
    """LoRA's B given values (as after training), so adapted and base models differ."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def untied() -> Any:
    """float32, an untied head with its own LoRA adapter (gradients reach the head through the chunks)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    base = Qwen2ForCausalLM(_config(tied=False))
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"], lora_dropout=0.0)
    return _trained(get_peft_model(base, cfg))


@pytest.fixture(scope="module")
def tied_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    from transformers import Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tied-qwen")
    torch.manual_seed(0)
    Qwen2ForCausalLM(_config(tied=True)).save_pretrained(folder)
    for f in tiny_model_path.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, folder / f.name)
    return folder


def _nf4(folder: Path, dtype: str) -> Any:
    """Tied embeddings, nf4 via bitsandbytes on CPU, prepared and adapted exactly as a trial does it."""
    from gridrun.spec import validate_dict
    from trainables.qlora_sft import setup_model

    spec = validate_dict(
        {
            "name": "t",
            "model": {"name": str(folder), "quantization": "nf4", "compute_dtype": dtype},
            "lora": {"r": 4, "dropout": 0.0},
        }
    )
    model, _, _ = setup_model(spec)
    return _trained(model)


@pytest.fixture(scope="module")
def nf4_tied(tied_folder: Path) -> Any:
    """nf4 codes, float32 compute: every gradient in float32, so only the order of sums differs."""
    return _nf4(tied_folder, "float32")


@pytest.fixture(scope="module")
def nf4_bf16(tied_folder: Path) -> Any:
    """nf4 with bfloat16 compute, a trial's default: the 4-bit matmuls and their backward round to bfloat16."""
    return _nf4(tied_folder, "bfloat16")


@pytest.fixture(params=["untied", "nf4_tied", "nf4_bf16"])
def model(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def _padded() -> dict[str, Any]:
    """Three right-padded rows of 19, 13 and 6 tokens; the first 3 of each are a prompt (labels -100)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (3, 19), generator=g)
    mask = torch.ones_like(ids)
    for k, n in enumerate([19, 13, 6]):
        mask[k, n:] = 0
        ids[k, n:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _packed() -> dict[str, Any]:
    """The same examples packed into one row (transformers' flattening collator: position ids restart)."""
    from transformers import DataCollatorWithFlattening

    b = _padded()
    rows = [
        {"input_ids": b["input_ids"][k][m.bool()].tolist(), "labels": b["labels"][k][m.bool()].tolist()}
        for k, m in enumerate(b["attention_mask"])
    ]
    return dict(DataCollatorWithFlattening(return_tensors="pt", separator_id=-100)(rows))


def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _ref_logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(**_inputs(batch), use_cache=False).logits.float(), -1)
    targets = shift_targets(batch["labels"])
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return picked.masked_fill(targets == -100, 0.0)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("make", [_padded, _packed])
def test_token_logprobs_and_nll_equal_full_logits(model: Any, chunk: int, make: Any) -> None:
    model.eval()
    batch = make()
    ref = _ref_logprobs(model, batch)
    got = target_logprobs(model, _inputs(batch), shift_targets(batch["labels"]), chunk)
    assert got.dtype == torch.float32 and got.shape == batch["labels"].shape
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    total, count = nll_sum(model, _inputs(batch), batch["labels"], chunk)
    with torch.no_grad():  # cross_entropy over the full float32 logits, as the probe computed it before
        logits = model(**_inputs(batch), use_cache=False).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 1006), labels.reshape(-1), reduction="sum")
    assert count == int((labels != -100).sum()) > 0
    assert _rel(total, float(want)) < 1e-6


def _float32_logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The full logits with the head's product in float32 (as the KL computes it): the decoder's final (normed)
    hidden states, which the model feeds its head, times the head's weight, both upcast, outside any autocast (a
    head with its own adapter as it is). For a float32 head it is ``model(...).logits`` itself (checked below)."""
    inner = model.get_base_model()
    with torch.no_grad():
        h = inner.get_decoder()(**inputs, use_cache=False).last_hidden_state
        head = inner.get_output_embeddings()
        if type(head) is not torch.nn.Linear:  # a head peft wraps (LoRA on lm_head) computes as it does
            return head(h)
        with torch.autocast("cpu", enabled=False):
            return torch.nn.functional.linear(h.float(), head.weight.float())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_forward_kl_equals_full_logits_kl(model: Any, chunk: int) -> None:
    """Against kl over the full logits, each position's the head's float32 product (16-bit logits would round
    each by up to 2^-9 of its size, a floor under a small KL); in float32 compute that is the model's own logits."""
    model.eval()
    batch = _padded()
    mask = batch["attention_mask"]
    with torch.no_grad():
        with model.disable_adapter():
            lp = torch.log_softmax(_float32_logits(model, _inputs(batch)).double(), -1)
        lq = torch.log_softmax(_float32_logits(model, _inputs(batch)).double(), -1)
        if model.get_output_embeddings().weight.dtype == torch.float32:
            assert torch.equal(_float32_logits(model, _inputs(batch)), model(**_inputs(batch)).logits)
    want = float(((lp.exp() * (lp - lq)).sum(-1) * mask).sum())
    got = forward_kl_sum(model, _inputs(batch), mask, chunk)
    assert want > 1e-3  # the adapter changed the model: a real number is compared
    assert _rel(got, want) < 1e-6


def _grads(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("make", [_padded, _packed])
def test_training_loss_and_lora_gradients_equal_full_logits(model: Any, chunk: int, make: Any, request) -> None:
    # nf4_bf16 keeps its residual stream, norms and head in bfloat16 (peft's float32 upcast is skipped under
    # bfloat16): every gradient through the layers is rounded to 8 mantissa bits, and the head's gradient is rounded
    # per chunk of the summed loss instead of once for the mean, which moves layer 0's LoRA gradients by ~2%. The
    # bar is the reference's own rounding noise: its gradients against themselves with the loss scaled by 3 (2.6-2.8%
    # here). In float32 compute (the other models) they agree to 1e-5.
    bf16 = request.node.callspec.params["model"] == "nf4_bf16"
    model.train()
    batch = make()
    model.zero_grad(set_to_none=True)
    ref = model(**batch, use_cache=False).loss  # transformers' loss over the full float32 logits
    ref.backward()
    want = _grads(model)
    grad_tol = 1e-5
    if bf16:
        model.zero_grad(set_to_none=True)
        (model(**batch, use_cache=False).loss * 3).backward()
        noise = {n: float((g / 3 - want[n]).abs().max()) / float(want[n].abs().max()) for n, g in _grads(model).items()}
        grad_tol = 1.5 * max(noise.values())
        assert 1e-3 < grad_tol < 0.1  # bfloat16 rounding, not a broken reference
    model.zero_grad(set_to_none=True)
    got = causal_lm_loss(model, batch, chunk)
    got.backward()
    have = _grads(model)
    model.zero_grad(set_to_none=True)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert _rel(float(got), float(ref)) < 1e-6
    assert set(have) == set(want)
    untied_head = not model.get_base_model().config.tie_word_embeddings
    assert any("lm_head" in n for n in want) == untied_head  # the untied model's head is adapted: its LoRA too
    for name, g in want.items():
        assert float(g.abs().max()) > 0, name  # every adapter weight gets a gradient: the comparison is real
        err = float((have[name] - g).abs().max()) / float(g.abs().max())
        assert err < grad_tol, (name, err)


def test_the_head_never_sees_more_than_a_chunk(untied: Any) -> None:
    """The LM head is called on at most ``chunk`` scored positions, never on masked ones, in scoring and training."""
    head = untied.get_base_model().get_output_embeddings()
    seen: list[int] = []
    hook = head.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0] if a[0].dim() == 2 else -1))
    try:
        batch = _padded()
        scored = int((shift_targets(batch["labels"]) != -100).sum())
        target_logprobs(untied, _inputs(batch), shift_targets(batch["labels"]), 7)
        assert sum(seen) == scored and max(seen) == 7
        seen.clear()
        causal_lm_loss(untied, batch, 7).backward()
        assert sum(seen) == scored and max(seen) == 7
    finally:
        hook.remove()
        untied.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["untied", "nf4_bf16"])
def test_scaled_chunked_loss_under_bf16_autocast_gives_the_scaled_full_logits_gradients(name: str, request) -> None:
    """The trainable's step: the chunked loss under CPU bfloat16 autocast, scaled by a GradScaler (its default
    2**16) after the loss ran its head's backward inside its forward, then unscaled. The scale is applied exactly
    once (a power of two: bit-identical to no scale at all), and the gradients are as close to the model's own
    without autocast (the LoRA matmuls in float32) as the unchunked loss's under the same autocast and scale."""
    model = request.getfixturevalue(name)
    model.train()
    batch = _padded()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # only for the scaler's unscale_: nothing steps

    def grads(loss_fn: Any, scale: bool, bf16: bool = True) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=scale)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        out = _grads(model)
        model.zero_grad(set_to_none=True)
        return float(loss.detach()), out

    def full() -> Any:
        return model(**batch, use_cache=False).loss

    def chunked() -> Any:
        return causal_lm_loss(model, batch, 7)

    exact_loss, exact = grads(full, False, bf16=False)
    ref_loss, want = grads(full, True)
    got_loss, have = grads(chunked, True)
    _, plain = grads(chunked, False)
    assert set(have) == set(want) == set(plain) == set(exact)
    assert any("lm_head" in n for n in want) == (name == "untied")
    # the head's logits are bfloat16 in both (autocast), the log-softmax and the loss float32
    assert _rel(got_loss, ref_loss) < 1e-5 and _rel(got_loss, exact_loss) < 1e-2

    def err(g: dict[str, torch.Tensor]) -> float:
        return max(float((g[n] - e).abs().max()) / float(e.abs().max()) for n, e in exact.items())

    for n, g in have.items():
        assert float(g.abs().max()) > 0, n
        torch.testing.assert_close(g, plain[n], rtol=0, atol=0)  # the scale multiplied in once, exactly
    # bfloat16 rounds every matmul to 8 mantissa bits, so both differ from the float32-LoRA gradients by
    # percents in the first layer; chunks change which roundings happen (the head's gradient is rounded per
    # chunk, unnormalized), not how many: here 2.1% vs 1.6% (untied), 6.1% vs 6.3% (nf4)
    assert err(have) < 2 * err(want)


@pytest.mark.parametrize("name", ["untied", "nf4_bf16"])
def test_chunked_scoring_under_bf16_autocast_equals_full_logits_under_it(name: str, request) -> None:
    """Eval rounds score under the trial's autocast: the chunked log-likelihoods then equal the full logits'
    computed under the same autocast (bfloat16 head, float32 softmax), and the KL the full float32 head products
    of the hidden states computed under it (float64 softmax)."""
    model = request.getfixturevalue(name)
    model.eval()
    batch = _padded()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _ref_logprobs(model, batch)
        got = target_logprobs(model, _inputs(batch), shift_targets(batch["labels"]), 7)
        with torch.no_grad():
            with model.disable_adapter():
                lp = torch.log_softmax(_float32_logits(model, _inputs(batch)).double(), -1)
            lq = torch.log_softmax(_float32_logits(model, _inputs(batch)).double(), -1)
        kl = forward_kl_sum(model, _inputs(batch), batch["attention_mask"], 7)
    want_kl = float(((lp.exp() * (lp - lq)).sum(-1) * batch["attention_mask"]).sum())
    # each position's bfloat16 logits come from the same head on the same row: equal to float32 rounding
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    assert want_kl > 1e-3 and _rel(kl, want_kl) < 1e-6
