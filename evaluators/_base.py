"""The evaluator interface, its registry, and the one greedy-generation helper every evaluator shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from gridrun.errors import GridrunError

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "GenerationSettings",
    "build_evaluator",
    "generate",
    "register_evaluator",
]


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are produced; comes from the spec's ``evaluate`` section, never from an evaluator."""

    max_new_tokens: int = 64
    batch_size: int = 32
    greedy: bool = True


class Evaluator(ABC):
    """Scores a model on examples (dicts with at least ``prompt``, already rendered, and ``answer``).

    Subclasses declare ``metrics`` (the keys ``evaluate`` returns, without the ``task/`` prefix) and accept
    their options as keyword arguments. ``evaluate`` is deterministic and never raises on model garbage.
    """

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    #: Regexes for further keys an evaluator may return (per-type breakdowns such as ``pass_rate_<type>``).
    metric_patterns: ClassVar[tuple[str, ...]] = ()
    #: Metrics that measure wall time (excluded from determinism checks).
    timing_metrics: ClassVar[tuple[str, ...]] = ()
    #: Regexes of answer formats the evaluator extracts; training targets must show one (``gridrun validate``).
    answer_formats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, generation: GenerationSettings | None = None, **options: Any) -> None:
        if options:
            raise GridrunError(
                f"evaluate.options.{self.name}: unknown option '{next(iter(options))}' for evaluator {self.name}"
            )
        self.generation = generation or GenerationSettings()

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        """Return ``{metric: value}`` for every name in ``metrics``."""


EVALUATORS: dict[str, type[Evaluator]] = {}


def register_evaluator(name: str) -> Any:
    """Class decorator adding an evaluator to the registry under ``name`` (duplicates are rejected)."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        if name in EVALUATORS:
            raise ValueError(f"evaluator {name!r} is already registered by {EVALUATORS[name].__name__}")
        cls.name = name
        EVALUATORS[name] = cls
        return cls

    return deco


def check_evaluator_names(names: list[str]) -> None:
    for n in names:
        if n not in EVALUATORS:
            raise GridrunError(f"evaluate.evaluators: unknown evaluator '{n}'; known: {', '.join(sorted(EVALUATORS))}")


def build_evaluator(name: str, generation: GenerationSettings, options: dict[str, Any] | None = None) -> Evaluator:
    """Instantiate a registered evaluator; unknown names, unknown options and bad values raise one line."""
    import inspect

    check_evaluator_names([name])
    cls = EVALUATORS[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "generation")]
    for key in options or {}:
        if key not in known:
            raise GridrunError(f"evaluate.options.{name}: unknown option '{key}'; known: {', '.join(known) or 'none'}")
    try:
        return cls(generation, **(options or {}))
    except ValueError as e:
        raise GridrunError(str(e)) from None


def generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """Greedy completions for rendered prompts, in their order; special tokens stripped.

    Prompts are tokenized without added special tokens, exactly as in training, and generated in batches of
    similar length (longest first: the left padding each row carries is small) with the tokenizer's left
    padding; a row's completion does not depend on the batch it is in. On CUDA the KV cache is static (no
    reallocation as sequences grow).
    """
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
                [prompts[i] for i in rows],
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            )
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
