"""Trial state that makes a restored trial continue exactly: adapter, optimizer, scheduler, RNG, data position.

Checkpoint folder layout (what ``tune.report`` persists and MLflow receives as the adapter artifact)::

    adapter/              peft ``save_pretrained``: adapter_model.safetensors + adapter_config.json
    trainer_state.pt      optimizer, scheduler, RNG states, position
    gridrun_card.json     base model id/revision, quantization, LoRA config, trial params, metrics
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["Position", "SampleStream", "load", "save"]


@dataclass
class Position:
    """Where training is: optimizer steps taken and samples consumed from the stream."""

    step: int
    samples_seen: int


class SampleStream:
    """An endless, seeded stream of example indices: epoch ``e`` is a fresh permutation of ``range(n)``.

    Position ``p`` of the stream depends only on (n, seed, p) — and the lengths, when grouped — so the data
    position is one integer. With ``lengths``, each epoch's order is transformers' length-grouped order (what
    ``Trainer(group_by_length=True)`` uses): shuffled, then sorted by length inside mega-batches of 50 batches, so
    a micro-batch holds examples of similar length and little padding is computed.
    """

    def __init__(self, n: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1) -> None:
        self.n, self.seed, self.lengths, self.batch_size = n, seed, lengths, batch_size
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if self.lengths is not None:
                import torch
                from transformers.trainer_pt_utils import get_length_grouped_indices

                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = [int(i) for i in get_length_grouped_indices(self.lengths, self.batch_size, generator=gen)]
            else:
                order = list(range(self.n))
                random.Random(f"order/{self.seed}/{epoch}").shuffle(order)
            self._perms = {epoch: order}  # one epoch at a time is all a sequential reader needs
        return self._perms[epoch]

    def take(self, start: int, count: int) -> list[int]:
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + count)]


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    s: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def card(spec: ExperimentSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    """What someone needs to use the adapter: base model, quantization, LoRA shape, the trial's values."""
    return {
        "base_model": spec.model.name,
        "base_model_revision": spec.model.revision,
        "quantization": spec.model.quantization,
        "compute_dtype": spec.model.compute_dtype,
        "lora": spec.lora.model_dump(mode="json"),
        "template": spec.data.template,
        "train": spec.train.model_dump(mode="json"),
        "sample_ratio": spec.data.sample_ratio,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def save(
    d: Path,
    model: Any,
    opt: Any,
    sched: Any,
    pos: Position,
    spec: ExperimentSpec,
    metrics: dict[str, Any],
    scaler: Any = None,
) -> None:
    """Write the checkpoint folder (``scaler``: float16's GradScaler, whose scale a restored trial continues from)."""
    import torch

    model.save_pretrained(str(d / "adapter"))
    torch.save(
        {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(),
            "position": asdict(pos),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        },
        d / "trainer_state.pt",
    )
    (d / "gridrun_card.json").write_text(json.dumps(card(spec, metrics), indent=2, default=str))


def load(d: Path, model: Any, opt: Any, sched: Any, scaler: Any = None) -> Position:
    """Restore adapter weights, optimizer, scheduler, RNG (and the GradScaler's scale) from ``d``; return the data
    position."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"checkpoint {d} does not match this adapter: unexpected keys {unexpected[:3]}")
    st = torch.load(d / "trainer_state.pt", weights_only=False)
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if scaler is not None and st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    _set_rng_state(st["rng"])
    return Position(**st["position"])
