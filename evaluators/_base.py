"""The evaluator interface and its registry; completions come from the trial's generator (``generation``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from evaluators.generation import GenerationSettings, Generator, HFGenerator
from gridrun.errors import GridrunError

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "GenerationSettings",
    "build_evaluator",
    "register_evaluator",
]


class Evaluator(ABC):
    """Scores a model on examples (dicts with at least ``prompt``, already rendered, and ``answer``).

    Subclasses declare ``metrics`` (the keys ``evaluate`` returns, without the ``task/`` prefix) and accept
    their options as keyword arguments. ``evaluate`` is deterministic and never raises on model garbage.
    Completions come from ``self.generator`` (the trial's, set by :func:`build_evaluator`; HF by default).
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
        self.generator: Generator = HFGenerator()

    def complete(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> list[str]:
        """The model's completions of the examples' prompts, by the trial's generator."""
        return self.generator.generate(model, tokenizer, [e["prompt"] for e in examples], self.generation)

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


def build_evaluator(
    name: str,
    generation: GenerationSettings,
    options: dict[str, Any] | None = None,
    generator: Generator | None = None,
) -> Evaluator:
    """Instantiate a registered evaluator generating with ``generator`` (the trial's; default HF); unknown names,
    unknown options and bad values raise one line."""
    import inspect

    check_evaluator_names([name])
    cls = EVALUATORS[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "generation")]
    for key in options or {}:
        if key not in known:
            raise GridrunError(f"evaluate.options.{name}: unknown option '{key}'; known: {', '.join(known) or 'none'}")
    try:
        ev = cls(generation, **(options or {}))
    except ValueError as e:
        raise GridrunError(str(e)) from None
    if generator is not None:
        ev.generator = generator
    return ev
