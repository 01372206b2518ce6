"""gridrun: forgetting-aware LoRA/QLoRA hyperparameter search (Ray Tune + Optuna + ASHA + MLflow from one YAML).

The package imports no Ray, MLflow or torch at its top, so ``gridrun validate`` and the CLI start fast; the
modules that need them import them where they are used.
"""

from gridrun.errors import GridrunError, SpecError
from gridrun.spec import ExperimentSpec, load_spec

__all__ = ["ExperimentSpec", "GridrunError", "SpecError", "load_spec"]
