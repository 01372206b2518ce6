"""MLflow as the system of record: a parent run per experiment, a child run per trial, driver-side only.

The whole lifecycle lives here: the parent run opened (``start_parent_run``), child runs written by the Tune
callback, the parent closed with the summary, best metrics and report plots (``finish_parent``) or marked
KILLED (``close_parent``), runs an interrupted driver left behind closed (``mark_interrupted``) or dropped
(``drop_orphans``), adapters registered (``register_adapters``), and the summary read back
(``summary_from_mlflow``).

``MLflowTracker`` is a Ray Tune callback; it runs in the driver, so there is exactly one writer (no SQLite
locks) whatever the cluster size. Child runs get every param of the trial's spec, metric curves on the
``samples_seen`` axis (the compute axis ASHA compares trials on, identical across trials whatever their
batch size), the adapter of the trial's best checkpoint (by objective, kept by
:class:`~gridrun.checkpoints.CheckpointKeeper`) as an artifact, and status / stop-reason tags. Checkpoints are
read through Tune's storage filesystem, so an experiment whose storage is an object store uploads them too.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from gridrun.metrics import namespaced_metrics, stop_reason

if TYPE_CHECKING:
    from gridrun.checkpoints import CheckpointKeeper
    from gridrun.spec import ExperimentSpec

__all__ = [
    "MLflowTracker",
    "close_parent",
    "drop_orphans",
    "finish_parent",
    "flatten",
    "mark_interrupted",
    "register_adapters",
    "start_parent_run",
    "summary_from_mlflow",
]

log = logging.getLogger("gridrun")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_parent_run(uri: str, experiment: str, run_name: str, spec_yaml: str, tags: dict[str, str]) -> tuple[str, str]:
    """Create (or reuse) the MLflow experiment and open its parent run; returns (experiment_id, run_id)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    if exp is None or "mlflow.experimentKind" not in exp.tags:
        # MLflow 3 shows experiments of unknown kind as GenAI projects; these are model-training runs.
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(exp_id, run_name=run_name, tags={"gridrun.kind": "experiment", **tags})
    client.log_text(run.info.run_id, spec_yaml, "spec.yaml")
    return exp_id, run.info.run_id


class MLflowTracker(Callback):
    """Driver-side Tune callback writing one child run per trial under the experiment's parent run."""

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        spec: ExperimentSpec,
        searched: list[str],
        reasons: dict[str, str],
        keeper: CheckpointKeeper,
        log_adapters: bool = True,
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self.searched = searched
        self.reasons = reasons
        self.keeper = keeper
        self.log_adapters = log_adapters
        self.runs: dict[str, str] = {}  # trial_id -> MLflow run id
        self._last_step: dict[str, int] = {}  # run id -> last samples_seen step logged
        self._restored: set[str] = set()  # run ids inherited from an interrupted driver
        self._params_due: set[str] = set()  # run ids created whose params are not written yet
        self._resumed = False
        self._client: Any = None
        self._pending: list[tuple[str, Callable[[], object]]] = []

    def _safely(self, what: str, write: Callable[[], object]) -> None:
        """Write to MLflow; if the server is briefly away, keep the write and retry it on the next event.

        A tracking hiccup must never kill the experiment (the trials and their checkpoints are fine).
        """
        self._flush()
        try:
            write()
        except Exception as e:
            log.warning("MLflow %s failed (%s); will retry", what, str(e).splitlines()[0] if str(e) else e)
            self._pending.append((what, write))

    def _flush(self) -> None:
        while self._pending:
            _, write = self._pending[0]
            try:
                write()
            except Exception:
                return
            self._pending.pop(0)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    # Tune keeps callback state in its experiment checkpoint: a resumed experiment continues the same runs.
    def get_state(self) -> dict[str, Any] | None:
        return {
            "runs": dict(self.runs),
            "reasons": dict(self.reasons),
            "last_step": dict(self._last_step),
            "params_due": sorted(self._params_due),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs.update(state.get("runs", {}))
        self.reasons.update(state.get("reasons", {}))
        self._last_step.update(state.get("last_step", {}))
        self._params_due.update(state.get("params_due", []))
        self._restored.update(self.runs.values())
        self._resumed = True

    def _resume_run(self, run_id: str) -> None:
        """First event of a restored run: reopen it and learn which steps MLflow already holds.

        The experiment state Tune saved may be older than the last write to MLflow; MLflow is the authority.
        """
        self._restored.discard(run_id)
        hist = self.client.get_metric_history(run_id, "samples_seen")
        if hist:
            self._last_step[run_id] = max(self._last_step.get(run_id, -1), max(m.step for m in hist))
        self.client.update_run(run_id, status="RUNNING")

    def _existing_run(self, trial_id: str) -> str | None:
        """A child run of this experiment for ``trial_id`` that the state Tune restored does not know of
        (created after its last snapshot, before the driver died)."""
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`gridrun.trial_id` = '{trial_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _run_for(self, trial: Any) -> str:
        if trial.trial_id not in self.runs and self._resumed:
            existing = self._existing_run(trial.trial_id)
            if existing:
                self.runs[trial.trial_id] = existing
                self._restored.add(existing)
        if trial.trial_id not in self.runs:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial.trial_id}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "gridrun.trial_id": trial.trial_id,
                    "gridrun.kind": "trial",
                    "gridrun.searched": ",".join(self.searched),
                    "gridrun.status": "RUNNING",
                },
            )
            self.runs[trial.trial_id] = run.info.run_id
            self._params_due.add(run.info.run_id)
        run_id = self.runs[trial.trial_id]
        if run_id in self._params_due:  # a retried creation writes the params it could not write the first time
            self._log_params(run_id, flatten(self.spec.with_params(trial.config).trial_dict()))
            self._params_due.discard(run_id)
        if run_id in self._restored:
            self._resume_run(run_id)
        return run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-batch limit
            self.client.log_batch(run_id, params=items[i : i + 100])

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._safely("create run", lambda: self._run_for(trial))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._safely("log metrics", lambda: self._log_result(trial, dict(result)))

    def _log_result(self, trial: Any, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self._run_for(trial)
        step = int(result.get("samples_seen", result.get("training_iteration", 0)))
        if step <= self._last_step.get(run_id, -1):
            return  # already logged before an interruption: a resumed trial reports it again, identically
        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, step) for k, v in namespaced_metrics(result).items() if math.isfinite(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        self._last_step[run_id] = step  # only once written: a failed write is retried, not skipped

    def _finish(self, trial: Any, status: str, mlflow_status: str, reason: str) -> None:
        self._safely("finish run", lambda: self._finish_run(trial, status, mlflow_status, reason))

    def _finish_run(self, trial: Any, status: str, mlflow_status: str, reason: str) -> None:
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, "gridrun.status", status)
        self.client.set_tag(run_id, "gridrun.stop_reason", reason)
        best = self.keeper.best(trial.trial_id)
        saved = best or self.keeper.latest(trial.trial_id)
        if self.log_adapters and saved is not None:
            # as_directory: the folder itself on local storage, a temporary download from an object store
            with saved.checkpoint.as_directory() as d:
                ckpt = Path(d)
                if (ckpt / "adapter").is_dir():
                    self.client.log_artifacts(run_id, str(ckpt / "adapter"), "adapter")
                    self.client.log_artifact(run_id, str(ckpt / "gridrun_card.json"), "adapter")
                else:  # never lose the run's record over an artifact
                    self.client.set_tag(run_id, "gridrun.artifact_error", f"checkpoint {saved.path} has no adapter/")
            self.client.set_tag(run_id, "gridrun.adapter_checkpoint", saved.path)
            if best:
                self.client.set_tag(run_id, "gridrun.adapter_objective", f"{best.objective:.6g}")
                self.client.set_tag(run_id, "gridrun.adapter_samples_seen", str(best.metrics.get("samples_seen")))
        self.client.set_terminated(run_id, mlflow_status)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        reason = stop_reason(self.reasons, trial.trial_id, trial.last_result)
        self._finish(trial, "TERMINATED", "FINISHED", reason)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", "FAILED", "error")

    def _kill(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "KILLED")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Close runs of trials that did not finish (an interrupted experiment): KILLED, never left RUNNING."""
        for trial in trials:
            if trial.trial_id in self.runs and trial.status not in ("TERMINATED", "ERROR"):
                self._safely("close run", functools.partial(self._kill, self.runs[trial.trial_id]))
        self._flush()
        if self._pending:
            log.warning(
                "%d MLflow writes could not be made (server unreachable); trial results and checkpoints "
                "are intact in the experiment folder",
                len(self._pending),
            )


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
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        versions.append(str(mv.version))
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
    client.set_terminated(parent_run_id, "FINISHED")


def summary_from_mlflow(uri: str, parent_run_id: str) -> dict[str, Any]:
    """The summary a finished experiment logged to its MLflow parent run (``summary.json``)."""
    from gridrun.errors import GridrunError
    from gridrun.validate import check_tracking_uri

    check_tracking_uri(uri)
    try:
        text = _client(uri).download_artifacts(parent_run_id, "summary.json")
    except Exception as e:
        raise GridrunError(f"--from-mlflow {parent_run_id}: no summary.json on that run ({type(e).__name__})") from None
    return json.loads(Path(text).read_text())
