"""The experiment's MLflow parent run after its trials: runs an interrupted driver left RUNNING closed
(``mark_interrupted``) or dropped (``drop_orphans``), the adapters worth shipping registered (``register_adapters``),
the parent closed with the summary, best metrics and plots (``finish_parent``) or KILLED (``close_parent``), and
the summary read back (``summary_from_mlflow``). Driver side; ``gridrun.tracking`` re-exports them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gridrun.run_writer import mlflow_client as _client

__all__ = [
    "close_parent",
    "drop_orphans",
    "finish_parent",
    "mark_interrupted",
    "register_adapters",
    "summary_from_mlflow",
]

log = logging.getLogger("gridrun")


def mark_interrupted(uri: str, parent_run_id: str) -> int:
    """Runs an interrupted driver left RUNNING (parent and children) become KILLED; returns how many."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000
    )
    n = 0
    for r in [parent, *runs]:
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")
            n += 1
    client.update_run(parent_run_id, status="RUNNING")  # the resumed experiment is running again
    return n


def register_adapters(uri: str, model_name: str, rows: list[dict[str, Any]]) -> list[str]:
    """Register each row's logged adapter as a version of ``model_name``, tagged with its metrics."""
    client = _client(uri)
    try:
        client.get_registered_model(model_name)
    except Exception:
        client.create_registered_model(model_name, description="gridrun adapters; tags carry the metrics")
    versions = []
    for row in rows:
        run_id = row.get("mlflow_run_id")
        if not run_id:
            continue
        run = client.get_run(run_id)
        source = f"{run.info.artifact_uri}/adapter"
        metrics = (row.get("best_checkpoint") or {}).get("metrics") or row.get("metrics") or {}
        tags = {k: f"{v:.6g}" for k, v in metrics.items() if isinstance(v, int | float)}
        tags.update({"gridrun.trial_id": row["trial_id"], **{f"param.{k}": str(v) for k, v in row["params"].items()}})
        model_id = run.data.tags.get("gridrun.model_id")  # the run's adapter as a LoggedModel (writer.py)
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags, model_id=model_id)
        versions.append(str(mv.version))
        if model_id:  # the logged model lists its registered versions, as mlflow.register_model records them
            from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

            known = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
            entry = [{"name": model_name, "version": str(mv.version)}]
            client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(known + entry)})
    return versions


def drop_orphans(uri: str, parent_run_id: str, trial_ids: set[str]) -> list[str]:
    """Soft-delete child runs of trials the resumed experiment no longer has (started after Tune's last state
    snapshot, then re-proposed under a new id): one child run per trial. Returns the deleted run ids."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000
    )
    dropped = []
    for r in runs:
        if r.data.tags.get("gridrun.trial_id") not in trial_ids:
            client.set_tag(r.info.run_id, "gridrun.orphan", "trial lost with the interrupted driver's state")
            client.delete_run(r.info.run_id)
            dropped.append(r.info.run_id)
    return dropped


def close_parent(uri: str, parent_run_id: str, status: str) -> None:
    """Mark the parent run ``status`` (an experiment that failed or was interrupted); never raises."""
    try:
        _client(uri).set_terminated(parent_run_id, status)
    except Exception as e:  # the original error matters more than this one
        log.warning("could not mark MLflow run %s %s: %s", parent_run_id, status, e)


def finish_parent(uri: str, parent_run_id: str, summary: dict[str, Any], plots: list[Path]) -> None:
    """Close a finished experiment's parent run: ``best/*`` metrics, ``summary.json``, plots under ``report/``."""
    client = _client(uri)
    best = summary.get("best") or {}
    for k, v in (best.get("metrics") or {}).items():
        if isinstance(v, int | float):
            client.log_metric(parent_run_id, f"best/{k}", float(v))
    for plot in plots:
        client.log_artifact(parent_run_id, str(plot), "report")
    client.log_text(parent_run_id, json.dumps(summary, indent=2, default=str), "summary.json")
    client.set_tag(parent_run_id, "gridrun.best_trial", str(best.get("trial_id")))
    if "infeasible" in summary:  # constrained mode: which trials broke the forgetting budget, on each run
        client.log_metric(parent_run_id, "infeasible_trials", float(len(summary["infeasible"])))
        for row in summary["trials"]:
            if row.get("mlflow_run_id"):
                client.set_tag(row["mlflow_run_id"], "gridrun.feasible", str(row["feasible"]).lower())
    client.set_terminated(parent_run_id, "FINISHED")


def summary_from_mlflow(uri: str, parent_run_id: str) -> dict[str, Any]:
    """The summary a finished experiment logged to its MLflow parent run (``summary.json``); the caller has
    checked ``uri`` (``validate.check_tracking_uri``: validate sits above this module)."""
    from gridrun.errors import GridrunError

    try:
        text = _client(uri).download_artifacts(parent_run_id, "summary.json")
    except Exception as e:
        raise GridrunError(f"--from-mlflow {parent_run_id}: no summary.json on that run ({type(e).__name__})") from None
    return json.loads(Path(text).read_text())
