"""The generation seam: the HF backend gives today's completions byte for byte (also from its dequantized layers),
every evaluator and measure generates through the trial's one generator, and ``evaluate.backend`` is validated."""

from __future__ import annotations

from typing import Any

import pytest

from evaluators import GenerationSettings, Generator, HFGenerator, build_evaluator
from evaluators.generation import stop_token_ids
from gridrun.errors import GridrunError


def _old_generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """``evaluators._base.generate`` as it was before the seam, verbatim: the reference the HF backend must equal."""
    import torch

    if not prompts:
        return []
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(p.device for p in model.parameters())
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    extra = {"cache_implementation": "static"} if device.type == "cuda" else {}
    out: dict[int, str] = {}
    try:
        for b in range(0, len(order), settings.batch_size):
            rows = order[b : b + settings.batch_size]
            enc = tokenizer(
                [prompts[i] for i in rows], add_special_tokens=False, padding=True, padding_side="left",
                return_tensors="pt",
            )  # fmt: skip
            with torch.no_grad():
                gen = model.generate(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=not settings.greedy,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=pad,
                    **extra,
                )
            width = enc["input_ids"].shape[1]
            for i, text in zip(rows, tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True), strict=True):
                out[i] = text
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def trained_like() -> tuple[Any, Any, list[str]]:
    """The demo's nf4 model with an adapter whose B is not zero (so it changes the completions), and the demo's
    eval prompts plus squad's (longer prompts, ragged batches)."""
    import torch

    from gridrun.spec import load_spec
    from tests.conftest import FORGETTING, TINY
    from trainables.data import load_task_data, render_prompt
    from trainables.qlora_sft import setup_model

    spec = load_spec(FORGETTING, TINY)
    model, tok, _ = setup_model(spec)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    prompts = []
    for task in ("builtin:json-format", "builtin:squad"):
        _, rows = load_task_data(spec.data.model_copy(update={"task": task, "eval_size": 6, "options": {}}), 0)
        prompts += [render_prompt(tok, r["prompt"], "chat") for r in rows]
    return model, tok, prompts


def test_hf_backend_equals_the_old_generate_byte_for_byte(trained_like: tuple[Any, Any, list[str]]) -> None:
    import bitsandbytes as bnb

    model, tok, prompts = trained_like
    settings = GenerationSettings(max_new_tokens=24, batch_size=4)
    old = _old_generate(model, tok, prompts, settings)
    with model.disable_adapter():
        old_base = _old_generate(model, tok, prompts, settings)
    assert old != old_base  # the adapter matters here, so equality below covers it
    fast, plain = HFGenerator(), HFGenerator(dequantize_on_cpu=False)
    assert fast.generate(model, tok, prompts, settings) == old
    assert plain.generate(model, tok, prompts, settings) == old
    with model.disable_adapter():
        assert fast.generate(model, tok, prompts, settings) == old_base
    # the 4-bit layers are back in place (training goes on through them), and were dequantized once
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == len(fast._dequantized) > 0
    assert fast.generate(model, tok, prompts, GenerationSettings(max_new_tokens=24, batch_size=32)) == old


def test_the_eval_rounds_other_forwards_give_the_same_numbers_inside_inference(
    trained_like: tuple[Any, Any, list[str]],
) -> None:
    from forgetting.probe import probe_loss

    model, tok, prompts = trained_like
    ids = tok(" ".join(prompts), add_special_tokens=False)["input_ids"]
    blocks = [ids[i : i + 48] for i in range(0, 48 * 6, 48)]
    plain = probe_loss(model, blocks, batch_size=4)
    gen = HFGenerator()
    with gen.inference(model):
        assert type(model.get_base_model().model.layers[0].mlp.up_proj).__name__ == "LoraOnDequantized"
        twin = probe_loss(model, blocks, batch_size=4)
    assert twin == plain  # bit for bit
    assert type(model.get_base_model().model.layers[0].mlp.up_proj).__name__ == "Linear4bit"  # peft's, back


@pytest.mark.parametrize("scaling", [2.0, 1.0, 0.25, 16 / 6])
def test_the_lora_twin_equals_peft_bit_for_bit(trained_like: tuple[Any, Any, list[str]], scaling: float) -> None:
    """The twin folds a power-of-two scaling into A and adds into the base's output in place (addmm_); any other
    scaling goes the unfolded way: both give peft's numbers exactly, on a decode-shaped and a prefill-shaped input."""
    import torch

    from evaluators._dequantized import LoraOnDequantized

    model, _, _ = trained_like
    layer = model.get_base_model().model.layers[1].mlp.up_proj
    adapter = layer.active_adapters[0]
    kept = layer.scaling[adapter]
    gen = torch.Generator().manual_seed(1)
    model.eval()
    try:
        layer.scaling[adapter] = scaling
        twin = HFGenerator()._twin(layer)
        assert isinstance(twin, LoraOnDequantized) and twin.fold == (scaling in (2.0, 1.0, 0.25))
        with torch.no_grad():
            for shape in ((32, 1, 128), (4, 37, 128)):
                x = torch.randn(shape, generator=gen)
                assert torch.equal(twin(x), layer(x))
    finally:
        layer.scaling[adapter] = kept
        model.train()


def test_stop_strings_end_a_completion(trained_like: tuple[Any, Any, list[str]]) -> None:
    model, tok, prompts = trained_like
    full = HFGenerator().generate(model, tok, prompts[:4], GenerationSettings(max_new_tokens=24))
    cut = HFGenerator().generate(model, tok, prompts[:4], GenerationSettings(max_new_tokens=24, stop=(" ",)))
    assert cut != full
    for f, c in zip(full, cut, strict=True):
        assert c == (f[: f.index(" ") + 1] if " " in f else f)  # up to and including the first stop string


def test_greedy_ignores_the_models_penalties_and_stops_at_every_end_token_it_names(
    trained_like: tuple[Any, Any, list[str]],
) -> None:
    """A hub model's generation config (Qwen2.5-Instruct's) sets a repetition penalty for chat sampling and names
    two end tokens: greedy completions are the plain argmax ones, and end at either token (vLLM's rule too)."""
    model, tok, prompts = trained_like
    settings = GenerationSettings(max_new_tokens=24)
    plain = HFGenerator().generate(model, tok, prompts[:4], settings)
    config = model.generation_config
    kept = (config.repetition_penalty, config.no_repeat_ngram_size, config.eos_token_id)
    try:
        config.repetition_penalty, config.no_repeat_ngram_size = 5.0, 2
        assert HFGenerator().generate(model, tok, prompts[:4], settings) == plain
        config.repetition_penalty, config.no_repeat_ngram_size = kept[:2]
        # the model's config names a second end token: the second token of the first completion
        ids = tok(plain[0], add_special_tokens=False)["input_ids"]
        assert len(ids) > 3 and ids[1] != tok.eos_token_id
        config.eos_token_id = [tok.eos_token_id, ids[1]]
        assert stop_token_ids(model, tok) == [tok.eos_token_id, ids[1]]
        first = HFGenerator().generate(model, tok, prompts[:1], settings)[0]
        assert first == tok.decode(ids[:2], skip_special_tokens=True)
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size, config.eos_token_id = kept
    assert stop_token_ids(model, tok) == [tok.eos_token_id]


class Recording(Generator):
    """A backend that answers from a table and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[str], GenerationSettings]] = []

    def generate(self, model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
        self.calls.append((model, prompts, settings))
        return ['{"a": 1}'] * len(prompts)


def test_every_evaluator_and_the_judge_generate_through_the_trials_generator(tiny_spec: Any) -> None:
    from forgetting.judge import JudgeMeasure

    rec = Recording()
    settings = GenerationSettings(max_new_tokens=5, batch_size=2)
    examples = [{"prompt": "p1", "answer": '{"a": 1}'}, {"prompt": "p2", "answer": '{"a": 2}'}]
    ev = build_evaluator("json_format", settings, None, rec)
    assert ev.evaluate("the model", None, examples)["format_success"] == 1.0
    assert rec.calls == [("the model", ["p1", "p2"], settings)]
    for name in ("squad", "gsm8k"):
        assert build_evaluator(name, settings, None, rec).generator is rec
    spec = tiny_spec.model_copy(
        update={
            "forgetting": tiny_spec.forgetting.model_copy(update={"options": {"judge": {"url": "x", "model": "j"}}})
        }
    )
    judge = JudgeMeasure(spec)
    judge.prompts, judge.generator = ["q?"], rec
    assert judge._answers("m", None) == ['{"a": 1}']
    assert rec.calls[-1][1] == ["q?"] and rec.calls[-1][2].max_new_tokens == 256


def test_setup_eval_builds_one_generator_for_the_trial(tiny_spec: Any) -> None:
    from transformers import AutoTokenizer

    from forgetting import Baselines
    from forgetting.probe import ProbeBase
    from gridrun.builtin import resolve_model
    from trainables.evaluation import setup_eval

    tok = AutoTokenizer.from_pretrained(resolve_model(tiny_spec.model.name))
    ctx = setup_eval(tiny_spec, tok, Baselines({"probe": ProbeBase(1.0)}))
    assert isinstance(ctx.generator, HFGenerator)
    assert all(ev.generator is ctx.generator for ev in ctx.evaluators)
    assert all(m.generator is ctx.generator for m in ctx.measures)


def test_backend_field_and_validate(tiny_spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from gridrun.errors import SpecError
    from gridrun.spec import load_spec
    from gridrun.validate import check_spec
    from tests.conftest import FORGETTING, TINY

    assert tiny_spec.evaluate.backend == "hf"
    with pytest.raises(SpecError, match=r"evaluate\.backend") as e:
        load_spec(FORGETTING, [*TINY, "evaluate.backend=tgi"])
    assert "\n" not in str(e.value)
    vllm = load_spec(FORGETTING, [*TINY, "evaluate.backend=vllm"])
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(GridrunError, match=r"^evaluate\.backend: vllm is not installed here") as e:
            check_spec(vllm)
        assert "\n" not in str(e.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    with pytest.raises(GridrunError, match=r"^evaluate\.backend: vllm generates on a GPU"):
        check_spec(vllm)  # the demo trains on CPU
    gpu = load_spec(FORGETTING, [*TINY, "evaluate.backend=vllm", "resources.gpu=0.5", "model.quantization=int8"])
    with pytest.raises(GridrunError, match=r"^evaluate\.backend: vllm quantizes a base in flight to 4-bit only"):
        check_spec(gpu)
    big = load_spec(
        FORGETTING, [*TINY, "evaluate.backend=vllm", "resources.gpu=0.5", "search.space.lora.r.choices=[8,1024]"]
    )
    with pytest.raises(GridrunError, match=r"^lora\.r: vLLM serves LoRA ranks up to 512, got 1024; use evaluate") as e:
        check_spec(big)  # a searched rank past vLLM's cap fails in validate, not in the trial that draws it
    assert "\n" not in str(e.value)
