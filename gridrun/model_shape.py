"""The sizes of a dense decoder that memory depends on, read from its Hugging Face config (no weights): what
the trial's estimate (:mod:`gridrun.memory`) and the vLLM engine's (:mod:`gridrun.vllm_memory`) count from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gridrun.errors import GridrunError

__all__ = ["ModelShape"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a dense decoder that memory depends on, from its Hugging Face config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Raises GridrunError naming what is missing (a config that is not a dense decoder's)."""
        config = config.get("text_config") or config  # multimodal wrappers keep the language model's here
        need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [k for k in need if not isinstance(config.get(k), int)]
        if missing or config.get("num_local_experts") or config.get("num_experts"):
            what = f"no {', '.join(missing)}" if missing else "a mixture of experts"
            raise GridrunError(f"model.name: cannot estimate memory for this config ({what})")
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's projections: name → (in features, out features)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def bias_params(self) -> int:
        return self.layers * (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0

    def float_params(self) -> int:
        """Parameters bitsandbytes leaves unquantized: embeddings, lm_head (once if tied), norms, biases."""
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + norms + self.bias_params()

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linears().values())

    def params(self) -> int:
        return self.linear_params() + self.float_params()

    def lora_params(self, r: int, targets: list[str]) -> int:
        """peft's LoRA: A (r x in) and B (out x r) per targeted linear per layer; lm_head once."""
        per_layer = sum(r * (i + o) for name, (i, o) in self.linears().items() if name in targets)
        head = r * (self.hidden + self.vocab) if "lm_head" in targets else 0
        return self.layers * per_layer + head
