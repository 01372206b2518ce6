"""What each queued write does to MLflow (:class:`RunWriter`: one child run per trial under the experiment's parent
run, its params, curves, adapter and end), the client it writes with (:func:`mlflow_client`: short per-request
retries, the queue in :mod:`gridrun.writer` riding out outages), and which failures are worth retrying
(:func:`transient`). Every write is idempotent against what MLflow already holds, so a replayed one is harmless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CLIENT_ENV", "RunWriter", "mlflow_client", "transient"]

#: MLflow's client defaults retry one request 7 times with backoff (about a minute). The queue retries for as
#: long as an outage lasts, so one attempt only needs to ride out a blip (``setdefault``: the user's values win).
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # sleeps 0 s, then 2 s (urllib3: factor * 2 ** (retry - 1))
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # gridrun prints its own lines; MLflow's "🏃 View run ... at" per closed run over HTTP is noise
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` with short per-request retries and no per-run console lines."""
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)
    # urllib3 logs a warning per retried request: during an outage, a screenful; the queue says it in one line
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def transient(e: BaseException) -> bool:
    """Whether a failed write may succeed later (server away, busy, locked) rather than never (a bad value, a
    deleted run, a lost file): transient writes are retried, the others dropped with a warning."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):  # MLflow wraps connection failures as INTERNAL_ERROR (HTTP 500)
        code = e.get_http_status_code()
        return code >= 500 or code in (408, 429)
    # an answer from a server decides: requests' HTTPError (an OSError) from an artifact upload through a proxy (413
    # past nginx's body limit, 403), botocore's ClientError from an S3 artifact store; 4xx will not change on retry
    status = _http_status(e)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(e, FileNotFoundError):
        return False
    return isinstance(e, OSError | TimeoutError) or type(e).__module__.startswith("sqlalchemy")


def _http_status(e: BaseException) -> int | None:
    """The HTTP status a server answered with, where the error carries one (requests, botocore)."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)  # requests
    if status is None and isinstance(response, dict):  # botocore: response["ResponseMetadata"]["HTTPStatusCode"]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


class RunWriter:
    """Applies writes to MLflow: one child run per trial under the experiment's parent run.

    Args:
        runs: trial id -> run id already known (from a snapshot or a spill file).
        resumed: runs may exist that ``runs`` does not know of (an earlier driver created them).
        client: returns the ``MlflowClient`` to use (tests hand in a flaky one).
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        runs: dict[str, str] | None = None,
        resumed: bool = False,
        client: Callable[[], Any] | None = None,
    ) -> None:
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.runs: dict[str, str] = {}
        self.resumed = False
        self._restored: set[str] = set()  # runs an earlier driver wrote: reopen, learn their steps from MLflow
        self._written: dict[str, int] = {}  # run id -> last samples_seen step MLflow holds
        self._params_done: set[str] = set()
        self._client_fn = client
        self._client: Any = None
        self.restore(runs or {}, resumed)

    def restore(self, runs: dict[str, str], resumed: bool = True) -> None:
        self.runs.update(runs)
        self._restored.update(runs.values())
        self.resumed = self.resumed or resumed

    @property
    def client(self) -> Any:
        if self._client_fn is not None:
            return self._client_fn()
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    def apply(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "start":
            self._start(op)
            return
        run_id = self.runs.get(op["trial"])
        if run_id is None:
            raise LookupError(f"no MLflow run for trial {op['trial']}")
        self._touch(run_id)
        getattr(self, f"_{kind}")(run_id, op)

    def _touch(self, run_id: str) -> None:
        """First write to a run an earlier driver wrote: reopen it and learn which steps MLflow already holds
        (the snapshot Tune saved may be older than the last write; MLflow is the authority)."""
        if run_id not in self._restored:
            return
        hist = self.client.get_metric_history(run_id, "samples_seen")
        if hist:
            self._written[run_id] = max(self._written.get(run_id, -1), max(m.step for m in hist))
        self.client.update_run(run_id, status="RUNNING")
        self._restored.discard(run_id)

    def _existing(self, trial_id: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`gridrun.trial_id` = '{trial_id}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _start(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param

        tid = op["trial"]
        if tid not in self.runs and (self.resumed or op.get("tried")):
            # created by an earlier driver, or by an attempt whose answer was lost: one run per trial
            existing = self._existing(tid)
            if existing:
                self.restore({tid: existing}, resumed=self.resumed)
        if tid not in self.runs:
            op["tried"] = True
            tags = {"mlflow.parentRunId": self.parent_run_id, "gridrun.trial_id": tid, **op["tags"]}
            self.runs[tid] = self.client.create_run(self.experiment_id, run_name=op["name"], tags=tags).info.run_id
            self._params_done.discard(self.runs[tid])
        run_id = self.runs[tid]
        self._touch(run_id)
        if run_id not in self._params_done:
            items = [Param(k, str(v)[:6000]) for k, v in op["params"].items()]
            for i in range(0, len(items), 100):  # MLflow's per-batch limit
                self.client.log_batch(run_id, params=items[i : i + 100])
            self._params_done.add(run_id)

    def _metrics(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(op["step"])
        if step <= self._written.get(run_id, -1):
            return  # MLflow has it: an earlier driver wrote it before it was interrupted
        metrics = [Metric(k, float(v), op["ts"], step) for k, v in op["metrics"].items()]
        self.client.log_batch(run_id, metrics=metrics)
        self._written[run_id] = step

    def _tags(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()])

    def _finish(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = dict(op["tags"])
        saved = op.get("checkpoint")
        if saved is not None:
            # as_directory: the folder itself on local storage, a temporary download from an object store
            try:
                with saved.as_directory() as d:
                    ckpt = Path(d)
                    if (ckpt / "adapter").is_dir():
                        self.client.log_artifacts(run_id, str(ckpt / "adapter"), "adapter")
                        self.client.log_artifact(run_id, str(ckpt / "gridrun_card.json"), "adapter")
                        tags["gridrun.model_id"] = self._link_model(run_id, op["trial"])
                    else:  # never lose the run's record over an artifact
                        tags["gridrun.artifact_error"] = f"checkpoint {saved.path} has no adapter/"
            except FileNotFoundError:
                tags["gridrun.artifact_error"] = f"checkpoint {saved.path} is gone from storage"
            except Exception as e:  # an upload refused for good never costs the run its record
                if transient(e):
                    raise  # retried with the whole write: the server may take it later
                tags["gridrun.artifact_error"] = f"adapter not logged: {type(e).__name__}: {e}"[:500]
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, op["status"])

    def _link_model(self, run_id: str, trial_id: str) -> str:
        """The run's adapter as an MLflow 3 LoggedModel, an output of the run (the runs table's Models column):
        external, its files stay the run's ``adapter/`` artifact (one copy). Once per run, also when replayed."""
        from mlflow.entities import LoggedModelOutput

        run = self.client.get_run(run_id)
        if "gridrun.model_id" in run.data.tags:
            return str(run.data.tags["gridrun.model_id"])
        model = self.client.create_logged_model(
            self.experiment_id,
            name=f"adapter-{trial_id}",
            source_run_id=run_id,
            tags={"mlflow.model.isExternal": "true", "gridrun.adapter_uri": f"{run.info.artifact_uri}/adapter"},
            model_type="peft-lora-adapter",
        )
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, self._written.get(run_id, 0))])
        return str(model.model_id)

    def _kill(self, run_id: str, op: dict[str, Any]) -> None:
        self.client.set_terminated(run_id, "KILLED")
