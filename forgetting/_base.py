"""The forgetting-measure interface, its registry, and the typed record of the base model's scores.

A measure says which metrics it reports (``forget/<name>_*``), which one of them the budget, the penalty and the
Pareto front use when ``forgetting.primary`` names it (always "0 is the base model, higher is worse"), how its
base value is computed once on the base model (and what that value depends on, for the cache key), and how a
trial's model is scored against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from gridrun.errors import GridrunError

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = [
    "MEASURES",
    "Baselines",
    "Measure",
    "TaskPrompts",
    "active_measures",
    "check_measures",
    "check_primary",
    "primary_metric",
    "register_measure",
]

#: The trial's evaluation prompts, rendered in its template (what ``kl`` measures on, as in arXiv 2509.04259).
TaskPrompts = list[str]


class Measure(ABC):
    """One way of measuring what a trial forgot, compared with the base model.

    Subclasses set ``name`` (by :func:`register_measure`), ``metric`` (the one the budget, penalty and Pareto front
    read when this measure is ``forgetting.primary``: 0 at the base model, higher is worse), ``lower_is_better``
    for that metric, ``Base``, the dataclass of their cached base value (None: nothing to cache), and
    ``Options``, the pydantic model of their ``forgetting.options.<name>`` (None: they take none).
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    lower_is_better: ClassVar[bool] = True
    Base: ClassVar[type | None] = None
    Options: ClassVar[type[BaseModel] | None] = None
    #: The measure switches the adapter off (peft's ``disable_adapter``) to see the base: it needs peft's own LoRA
    #: layers in the model, so it never runs on a generator's inference view (whose twins peft cannot switch).
    switches_adapter: ClassVar[bool] = False

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        #: The trial's ``evaluators.Generator`` (set by the trainable's setup): what a measure that generates uses.
        self.generator: Any = None
        given = spec.forgetting.options.get(self.name) or {}
        self.options: Any = None
        if self.Options is None:
            if given:
                raise GridrunError(f"forgetting.options.{self.name}: measure {self.name} takes no options")
            return
        try:
            self.options = self.Options.model_validate(given)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise GridrunError(f"forgetting.options.{self.name}.{where}: {err['msg']}") from None

    @classmethod
    def enabled(cls, spec: ExperimentSpec) -> bool:
        """Whether the spec turns this measure on (default: it is listed in ``forgetting.measures``)."""
        return cls.name in spec.forgetting.measures

    def base_key(self) -> dict[str, Any]:
        """What the base value depends on besides the model (hashed into its cache key)."""
        return {}

    @abstractmethod
    def setup(self, tokenizer: Any, task_prompts: TaskPrompts) -> None:
        """Load and tokenize this measure's data once per trial (or once for the base value)."""

    def compute_base(self, model: Any, tokenizer: Any) -> Any:
        """The base value (an instance of ``Base``) on the model a trial starts from; only if ``Base`` is set."""
        raise NotImplementedError(f"forgetting measure {self.name} has no base value")

    @abstractmethod
    def score(self, model: Any, tokenizer: Any, base: Any) -> dict[str, float]:
        """This round's ``forget/*`` metrics for ``model`` (its ``metric`` among them), given the base value."""


MEASURES: dict[str, type[Measure]] = {}


def register_measure(name: str) -> Any:
    """Class decorator adding a measure to the registry under ``name`` (duplicates are rejected)."""

    def deco(cls: type[Measure]) -> type[Measure]:
        if name in MEASURES:
            raise ValueError(f"forgetting measure {name!r} is already registered by {MEASURES[name].__name__}")
        cls.name = name
        MEASURES[name] = cls
        return cls

    return deco


def check_measures(spec: ExperimentSpec) -> None:
    """Every name in ``forgetting.measures`` and ``forgetting.options`` is a registered measure, options are given
    only to measures that are on, each measure accepts its options, and ``forgetting.primary`` is on (one line)."""
    known = ", ".join(sorted(MEASURES))
    for name in spec.forgetting.measures:
        if name not in MEASURES:
            raise GridrunError(f"forgetting.measures: unknown measure '{name}'; known: {known}")
    for name in spec.forgetting.options:
        if name not in MEASURES:
            raise GridrunError(f"forgetting.options: unknown measure '{name}'; known: {known}")
        if not MEASURES[name].enabled(spec):
            raise GridrunError(f"forgetting.options.{name}: measure '{name}' is not turned on (forgetting.measures)")
    active_measures(spec)  # builds each: options checked


def check_primary(spec: ExperimentSpec) -> None:
    """``forgetting.primary`` names a registered measure that the spec turns on (one line otherwise)."""
    name = spec.forgetting.primary
    if name not in MEASURES:
        raise GridrunError(f"forgetting.primary: unknown measure '{name}'; known: {', '.join(sorted(MEASURES))}")
    if not MEASURES[name].enabled(spec):
        raise GridrunError(f"forgetting.primary: measure '{name}' is not turned on in the forgetting section")


def primary_metric(spec: ExperimentSpec) -> str:
    """The metric the forgetting budget, the penalty and the Pareto front read (e.g. ``forget/delta``)."""
    check_primary(spec)
    return MEASURES[spec.forgetting.primary].metric


def active_measures(spec: ExperimentSpec) -> list[Measure]:
    """The measures the spec turns on, in registry order."""
    check_primary(spec)
    return [cls(spec) for cls in MEASURES.values() if cls.enabled(spec)]


#: where :meth:`Baselines.to_json` keeps the base model's task scores (no measure has this name)
TASK_KEY = "task_base"


@dataclass
class Baselines:
    """The base model's value for each measure that has one: measure name → that measure's ``Base`` instance."""

    values: dict[str, Any] = field(default_factory=dict)
    #: the base model's task scores, ``task_base/<eval arm>/<task metric>`` → value (``trainables.base_scores``):
    #: not forgetting, but computed and passed to trials the same way, so resume restores both from one record
    task: dict[str, float] = field(default_factory=dict)

    def of(self, measure: str) -> Any:
        """The base value of ``measure`` (one line if it was not computed)."""
        if measure not in self.values:
            raise GridrunError(f"forgetting: no cached base-model value for measure '{measure}' was passed")
        return self.values[measure]

    def to_json(self) -> dict[str, dict[str, Any]]:
        out = {name: asdict(v) for name, v in self.values.items()}
        if self.task:
            out[TASK_KEY] = dict(self.task)
        return out

    @classmethod
    def from_json(cls, data: dict[str, dict[str, Any]]) -> Baselines:
        """Inverse of :meth:`to_json`; an unknown measure or field is one line."""
        out = {}
        task = {k: float(v) for k, v in data.get(TASK_KEY, {}).items()}
        for name, fields in data.items():
            if name == TASK_KEY:
                continue
            base = MEASURES[name].Base if name in MEASURES else None
            if base is None:
                raise GridrunError(f"forgetting: a recorded base value names measure '{name}', which has none")
            try:
                out[name] = base(**fields)
            except TypeError as e:
                raise GridrunError(f"forgetting: the recorded base value of '{name}' does not read ({e})") from None
        return cls(out, task)

    def describe(self) -> str:
        """One line for the console: every base number."""
        return ", ".join(f"{name} {asdict(v)}" for name, v in self.values.items())
