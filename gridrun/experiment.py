"""The one typed record of an experiment's metadata (``gridrun_experiment.json``): what resume, sync, compare and
export need besides Tune's own state — the spec, the trial spec, the base model's forgetting values, the MLflow ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gridrun import storage as store
from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec, spec_from_dict, validate_dict

__all__ = ["META_FILE", "ExperimentMeta", "MlflowIds"]

META_FILE = "gridrun_experiment.json"


@dataclass(frozen=True)
class MlflowIds:
    """Where the experiment's runs are: tracking URI, MLflow experiment id, parent run id."""

    uri: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class ExperimentMeta:
    """An experiment's metadata, written once at launch."""

    spec: dict[str, Any]
    trial_spec: dict[str, Any]
    experiment: str
    mlflow: MlflowIds
    #: measure name → its base value's fields (``forgetting.Baselines.to_json``)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)
    #: ``{budget_s, spent_s}`` of ``search.time_budget`` once a session has ended (resume gets the remainder)
    time_budget: dict[str, float] = field(default_factory=dict)
    #: the base model's task scores, one entry per eval arm: ``{"values": searched values, "scores": task/* → v}``
    base_scores: list[dict[str, Any]] = field(default_factory=list)

    def experiment_spec(self) -> ExperimentSpec:
        """The experiment's spec (search space included)."""
        return spec_from_dict(self.spec)

    def start_spec(self) -> ExperimentSpec:
        """The spec every trial starts from (fixed search values substituted)."""
        return validate_dict(self.trial_spec)

    def write(self, exp_dir: str | Path) -> None:
        """Into ``exp_dir``: a local folder or a storage URI (``gridrun.storage``)."""
        store.makedirs(exp_dir)
        store.write_text(store.join(exp_dir, META_FILE), json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, exp_dir: str | Path) -> ExperimentMeta:
        """The record in ``exp_dir``, a local folder or a storage URI (one line if it is not an experiment folder
        or the file does not read)."""
        path = store.join(exp_dir, META_FILE)
        try:
            text = store.read_text(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise GridrunError(f"{exp_dir} is not a gridrun experiment folder (no {META_FILE})") from None
        except OSError as e:  # an object store that cannot be read: a missing bucket, no credentials
            raise GridrunError(f"{exp_dir}: cannot read {META_FILE} ({store.one_line(e)})") from None
        try:
            data = json.loads(text)
            baselines = data.get("baselines")
            if baselines is None and "base_probe_loss" in data:  # written before the forgetting measures
                baselines = {"probe": {"loss": float(data["base_probe_loss"])}}
            return cls(
                spec=data["spec"],
                trial_spec=data["trial_spec"],
                experiment=data["experiment"],
                mlflow=MlflowIds(**data["mlflow"]),
                baselines=baselines or {},
                searched=list(data.get("searched", [])),
                time_budget=dict(data.get("time_budget") or {}),
                base_scores=list(data.get("base_scores") or []),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise GridrunError(f"{path}: not a readable gridrun experiment record ({type(e).__name__}: {e})") from None
