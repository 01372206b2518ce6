"""The experiment spec: typed schema (``schema``), YAML loading with ``--set`` overrides and the search-space
rules (``load``), Optuna's short distribution forms (``space``) and dotted-path substitution (``paths``)."""

from gridrun.spec.load import apply_overrides, load_spec, spec_from_dict
from gridrun.spec.paths import set_path
from gridrun.spec.schema import (
    MC_BENCHMARKS,
    CheckpointSpec,
    DataSpec,
    EvaluateSpec,
    ExperimentSpec,
    ForgettingSpec,
    LoraSpec,
    McSpec,
    ModelSpec,
    ObjectiveSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    TrackingSpec,
    TrainSpec,
    validate_dict,
)
from gridrun.spec.space import (
    CategoricalDist,
    Distribution,
    FixedValue,
    FloatDist,
    IntDist,
    parse_distribution,
    to_optuna,
    to_yaml,
)

__all__ = [
    "MC_BENCHMARKS",
    "CategoricalDist",
    "CheckpointSpec",
    "DataSpec",
    "Distribution",
    "EvaluateSpec",
    "ExperimentSpec",
    "FixedValue",
    "FloatDist",
    "ForgettingSpec",
    "IntDist",
    "LoraSpec",
    "McSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "TrackingSpec",
    "TrainSpec",
    "apply_overrides",
    "load_spec",
    "parse_distribution",
    "set_path",
    "spec_from_dict",
    "to_optuna",
    "to_yaml",
    "validate_dict",
]
