"""``builtin:tiny-general``: a ~1M-parameter Qwen2-architecture model pretrained offline on the built-in corpus.

Built once per recipe and cached under the user cache folder; the folder is an ordinary Hugging Face model
folder (config, safetensors, tokenizer with a chat template), so every later step loads it through exactly the
same ``from_pretrained`` path as a hub model. The build is deterministic: fixed seeds, fixed data order, a fixed
number of torch threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gridrun.builtin.corpus import general_documents, probe_texts

__all__ = ["RECIPE", "cache_root", "ensure_tiny_general"]

log = logging.getLogger(__name__)

#: Everything that determines the built model. Changing any value gives a new cache folder.
RECIPE: dict[str, Any] = {
    "version": 3,
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 448,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "corpus_docs": 12000,
    "corpus_seed": 0,
    "seq_len": 128,
    "batch_size": 32,
    "steps": 320,
    "lr": 3e-3,
    "warmup": 20,
    "seed": 0,
    "threads": 2,
}

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_root() -> Path:
    """The user cache folder: ``$GRIDRUN_CACHE``, else ``$XDG_CACHE_HOME/gridrun``, else ``~/.cache/gridrun``."""
    if os.environ.get("GRIDRUN_CACHE"):
        return Path(os.environ["GRIDRUN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gridrun"


def recipe_hash(recipe: dict[str, Any] = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_tiny_general(recipe: dict[str, Any] = RECIPE) -> Path:
    """Return the cached model folder, building it first if needed (safe under concurrent callers)."""
    from filelock import FileLock

    target = cache_root() / "models" / f"tiny-general-{recipe_hash(recipe)}"
    if (target / "gridrun_recipe.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "gridrun_recipe.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            _build(recipe, tmp)
            os.replace(tmp, target)  # atomic: readers never see a half-written folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Exactly Qwen2Tokenizer's pipeline: AutoTokenizer loads a qwen2 folder as Qwen2Tokenizer, which imposes
    # it; training with anything else would tokenize differently after reload than during pretraining.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _build(recipe: dict[str, Any], out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a one-shard model
    t0 = time.time()
    log.warning("building builtin:tiny-general (once per recipe; ~1-2 min on 2 CPU cores) into %s", out)
    docs = list(general_documents(recipe["corpus_docs"], recipe["corpus_seed"]))
    tokenizer = _train_tokenizer(docs, recipe["vocab_size"])
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(sep)
    n = recipe["seq_len"]
    blocks = torch.tensor(ids[: len(ids) // n * n]).view(-1, n)

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        max_position_embeddings=recipe["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    torch.manual_seed(recipe["seed"])
    try:
        model = Qwen2ForCausalLM(config)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01, betas=(0.9, 0.95))
        steps, warm = recipe["steps"], recipe["warmup"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
        g = torch.Generator().manual_seed(recipe["seed"])
        order = torch.randperm(len(blocks), generator=g)
        bs = recipe["batch_size"]
        model.train()
        losses = []
        for step in range(steps):
            idx = order[(step * bs) % len(order) : (step * bs) % len(order) + bs]
            if len(idx) < bs:
                idx = order[:bs]
            batch = blocks[idx]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        model.eval()
        held = []
        for enc in tokenizer(probe_texts(64), add_special_tokens=False)["input_ids"]:
            held.extend([*enc, sep])
        held_blocks = torch.tensor(held[: len(held) // n * n]).view(-1, n)[:32]
        with torch.no_grad():
            heldout = model(input_ids=held_blocks, labels=held_blocks).loss.item()
    finally:
        torch.set_num_threads(prev_threads)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "recipe": recipe,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_tokens": len(ids),
        "final_loss": sum(losses[-20:]) / 20,
        "first_loss": losses[0],
        "heldout_loss": heldout,
        "build_seconds": round(time.time() - t0, 1),
    }
    (out / "gridrun_recipe.json").write_text(json.dumps(info, indent=2))
    log.warning(
        "built builtin:tiny-general in %.0fs (loss %.2f -> %.2f)",
        info["build_seconds"],
        info["first_loss"],
        info["final_loss"],
    )
