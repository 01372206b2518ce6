"""``kl``: mean per-token KL(base ‖ tuned), base = the same peft model with its adapter disabled. Exactly 0 for an
untrained adapter; equal to ``torch.nn.functional.kl_div`` computed sequence by sequence, unpadded, to 1e-6."""

from __future__ import annotations

import pytest
import torch

from forgetting import mean_forward_kl


@pytest.fixture
def kl_spec(tiny_spec, tiny_model_path):
    return tiny_spec.with_params({"forgetting.measures": ["kl"], "model.quantization": "none", "lora.dropout": 0.0})


def _sequences(tok) -> list[list[int]]:
    texts = ["The cat sat on the mat.", "A much longer sentence about rivers, hills and the sea at night.", "Hi"]
    return tok(texts, add_special_tokens=False)["input_ids"]


def _train_adapter(model) -> None:
    """Give LoRA's B weights values, as training would: the tuned model now differs from the base."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _reference(model, seqs: list[list[int]]) -> float:
    """Plain kl_div on each sequence alone (no padding, no chunks), averaged over every token."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            with model.disable_adapter():
                log_p = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
            log_q = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
            total += float(torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="sum"))
            count += len(s)
    return total / count


def test_an_untrained_adapter_is_exactly_zero(kl_spec) -> None:
    from trainables.qlora_sft import setup_model

    model, tok, _ = setup_model(kl_spec)
    assert mean_forward_kl(model, _sequences(tok), tok.eos_token_id) == 0.0


@pytest.mark.parametrize(("batch_size", "chunk"), [(1, 64), (2, 3), (8, 1)])
def test_equals_the_kl_div_reference(kl_spec, batch_size: int, chunk: int) -> None:
    from trainables.qlora_sft import setup_model

    model, tok, _ = setup_model(kl_spec)
    _train_adapter(model)
    seqs = _sequences(tok)
    got = mean_forward_kl(model, seqs, tok.eos_token_id, batch_size=batch_size, chunk=chunk)
    ref = _reference(model, seqs)
    assert ref > 1e-3  # the adapter changed the model: the test compares a real number
    assert abs(got - ref) < 1e-6, (got, ref)


def test_the_measure_in_an_eval_round_and_as_primary(kl_spec) -> None:
    """Both KL metrics are reported, 0 at the start; with ``forgetting.primary: kl`` the objective is penalised
    by ``forget/kl_task``."""
    from trainables.evaluation import eval_round, setup_eval
    from trainables.qlora_sft import compute_baselines, setup_model

    spec = kl_spec.with_params({"forgetting.primary": "kl", "objective.penalty": 2.0})
    model, tok, _ = setup_model(spec)
    ctx = setup_eval(spec, tok, compute_baselines(spec, ["probe"]))
    m = eval_round(spec, model, tok, ctx)
    assert m["forget/kl_task"] == 0.0 and m["forget/kl_probe"] == 0.0 and m["forget/delta"] == 0.0
    _train_adapter(model)
    m = eval_round(spec, model, tok, ctx)
    assert m["forget/kl_task"] > 0 and m["forget/kl_probe"] > 0
    from gridrun.metrics import penalized

    want = penalized(m[spec.objective.metric], m["forget/kl_task"], 2.0, spec.objective.direction)
    assert m["objective"] == pytest.approx(want) != penalized(m[spec.objective.metric], m["forget/delta"], 2.0)


def test_in_an_eval_round_on_a_4bit_cpu_model_it_sees_the_base(tiny_spec, tiny_model_path) -> None:
    """nf4 on CPU, where eval rounds run on the HF generator's dequantized twins of the LoRA layers: peft cannot
    switch those off, so ``kl`` runs on peft's own layers and equals the measure computed outside any eval round
    (inside the twins' view it read the tuned model against itself: about 0)."""
    from trainables.evaluation import eval_round, setup_eval
    from trainables.qlora_sft import compute_baselines, setup_model

    spec = tiny_spec.with_params({"forgetting.measures": ["kl"], "model.quantization": "nf4", "lora.dropout": 0.0})
    model, tok, _ = setup_model(spec)
    ctx = setup_eval(spec, tok, compute_baselines(spec, ["probe"]))
    assert ctx.generator is not None and ctx.generator.dequantize_on_cpu  # the twins are in play
    _train_adapter(model)
    m = eval_round(spec, model, tok, ctx)
    kl = next(x for x in ctx.measures if x.name == "kl")
    alone = kl.score(model, tok, None)
    assert alone["forget/kl_probe"] > 1e-3
    assert m["forget/kl_probe"] == pytest.approx(alone["forget/kl_probe"], rel=1e-9)
    assert m["forget/kl_task"] == pytest.approx(alone["forget/kl_task"], rel=1e-9)


def test_a_model_without_an_adapter_is_one_line(kl_spec) -> None:
    from gridrun.errors import GridrunError
    from trainables.model import load_base

    base, tok = load_base(kl_spec.model, "cpu")
    with pytest.raises(GridrunError, match=r"forgetting.kl: the model has no peft adapter"):
        mean_forward_kl(base, _sequences(tok), tok.eos_token_id)


def test_under_a_16_bit_autocast_the_kl_head_computes_in_float32(kl_spec) -> None:
    """On a GPU the eval round runs under bfloat16 autocast: the KL's logits are the head's float32 product of the
    hidden states (not 16-bit logits, whose rounding puts a floor under the KL), and an untrained adapter is still
    exactly 0."""
    from gridrun.losses import _head, hidden_states
    from trainables.qlora_sft import setup_model

    model, tok, _ = setup_model(kl_spec)
    ids = torch.tensor([_sequences(tok)[1]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = hidden_states(model, {"input_ids": ids})[0]
        head, exact = _head(model, float32=True)
        native = _head(model)[1](h)
        got = exact(h)
    with torch.no_grad():
        want = torch.nn.functional.linear(h.float(), head.weight.float())
    assert native.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert torch.equal(got, want)  # bit for bit the float32 product
    assert not torch.equal(native.float(), want)  # the 16-bit one is rounded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mean_forward_kl(model, _sequences(tok), tok.eos_token_id) == 0.0
