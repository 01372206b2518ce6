"""A model's config as a dict without its weights: what the memory estimate, validate and launch read about a
model before anything is loaded (the builtin's recipe, a local folder, the hub cache or, asked, the hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gridrun.spec import ExperimentSpec

__all__ = ["model_config"]


def model_config(spec: ExperimentSpec, hub: bool = False) -> dict[str, Any] | None:
    """The model's config as a dict, reading no weights: the builtin model's (its recipe when not built yet), a
    local folder's ``config.json``, a hub model's from the local cache, or (``hub``) from the hub. None when
    it cannot be had offline."""
    from gridrun.builtin import builtin_name

    name = spec.model.name
    if builtin_name(name):
        from gridrun.builtin.tiny_model import RECIPE, cache_root, recipe_hash

        built = cache_root() / "models" / f"tiny-general-{recipe_hash()}" / "config.json"
        if built.is_file():
            return dict(json.loads(built.read_text()))
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        recipe = {k: RECIPE[k] for k in (*keys, "num_key_value_heads")}
        return {**recipe, "tie_word_embeddings": True, "model_type": "qwen2"}
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return dict(json.loads((folder / "config.json").read_text()))
    if folder.exists():
        return None
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name, revision=spec.model.revision, local_files_only=not hub)
    except (OSError, ValueError):
        return None
    return dict(cfg.to_dict())
