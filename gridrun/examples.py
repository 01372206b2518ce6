"""A prompt/answer example as token ids with the prompt masked, and a batch of them: what training computes its
loss on, and what the ``answer_loss`` evaluator scores (so both see exactly the same tokens). Below both
``trainables`` and ``evaluators``, which never import each other's side."""

from __future__ import annotations

from typing import Any

from gridrun.errors import GridrunError

__all__ = ["IGNORE_INDEX", "collate", "encode_example"]

IGNORE_INDEX = -100


def encode_example(tokenizer: Any, prompt_text: str, answer: str, max_len: int) -> dict[str, list[int]]:
    """Token ids for prompt + answer + EOS, with labels -100 on every prompt position.

    Prompt and answer are tokenized separately and concatenated, so the mask boundary is exact and the prompt
    tokens match what generation sees at evaluation. Over-long examples lose prompt tokens from the left
    first, then answer tokens from the right: what scoring a fixed example (``answer_loss``) needs. Training
    drops such an example instead (``trainables.tokenized``), so no trained answer lacks its EOS.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise GridrunError("model tokenizer has no EOS token; cannot teach the model to stop")
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
    if len(a) > max_len - 1:
        a = a[: max_len - 1]
    p = p[-(max_len - len(a)) :] if len(p) + len(a) > max_len else p
    return {"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a}


def collate(
    batch: list[dict[str, list[int]]], tokenizer: Any, padding_free: bool = False, varlen: bool = False
) -> dict[str, Any]:
    """Encoded examples → a model batch, by transformers' collators.

    Padded: right-padded ``input_ids`` and ``attention_mask``, labels padded with -100. Padding-free: the
    micro-batch concatenated into one row with ``position_ids`` restarting at every example and -100 at each
    boundary (transformers' flattening semantics); the model's attention then keeps examples apart (a
    block-causal mask built from the position ids), so no pad token is computed and the loss is the padded one.
    ``varlen`` (FlashAttention-2) adds the collator's ``cu_seq_lens_q/k`` and ``max_length_q/k``, the kernel's
    variable-length arguments, so it does not derive them from the position ids on the GPU at every layer.
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    features = [{"input_ids": b["input_ids"], "labels": b["labels"]} for b in batch]
    if padding_free:
        flatten = DataCollatorWithFlattening(
            return_tensors="pt", separator_id=IGNORE_INDEX, return_flash_attn_kwargs=varlen
        )
        return dict(flatten(features))
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
        out = dict(pad(features))
    finally:
        tokenizer.padding_side = side
    return out
