"""The driver's one MLflow writer: child-run writes leave Tune's event loop for a bounded, in-order queue that a
thread drains, so a tracking outage costs Tune no time; what an outage leaves at the end is spilled to a file.

Hand-written on purpose: MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) covers metrics,
params and tags only, not run creation, artifacts or termination, whose order matters here, and it drops a batch
once the HTTP client's retries are spent. This queue keeps every write, in order, until MLflow takes it; MLflow's
own client retries (kept short by :func:`mlflow_client`) smooth over blips, the queue over outages.

Writes are plain data (``{"op": ..., "trial": ...}``), so the pending ones travel in Tune's experiment snapshot
and in the spill file that ``gridrun resume`` and ``gridrun sync`` replay. Each is idempotent against what MLflow
already holds: a trial's run is looked up before it is created again, a metric step MLflow has is not written
twice (identical resends are deduplicated by MLflow itself), tags and status are set again.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gridrun import storage

__all__ = ["SPILL_FILE", "OpQueue", "RunWriter", "mlflow_client", "replay_spill", "transient"]

log = logging.getLogger("gridrun")

#: Where an experiment's MLflow writes wait when the server is still away at the end (in the experiment folder).
SPILL_FILE = "mlflow_pending.pkl"

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


class OpQueue:
    """A bounded, in-order queue of writes and the daemon thread applying them; a write that fails for a
    transient reason stays at the head and is retried with backoff, so nothing is reordered or lost.

    Full (an outage long enough to queue ``maxsize`` writes), ``put`` waits for room: memory stays bounded and
    nothing is dropped, at the price of Tune waiting from then on.
    """

    def __init__(self, apply: Callable[[dict[str, Any]], None], maxsize: int = 10_000) -> None:
        self._apply, self.maxsize = apply, maxsize
        self._ops: collections.deque[dict[str, Any]] = collections.deque()
        self.lock = threading.Condition()  # guards _ops; held only for moments, never across a write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing_since: float | None = None  # monotonic time of the first failure of this outage
        self.last_ok = time.monotonic()
        self.written = self.dropped = 0
        self._warned_full = False
        # While the driver waits at the end (``drain``), a failing write is retried at least every ``probe_s``
        # seconds, not after the outage's long backoff: a server back mid-wait is written to at once.
        self.probe_s = 1.0
        self._draining = False
        self._wake = threading.Event()  # cuts a backoff short (drain starts, or the queue closes)

    def __len__(self) -> int:
        return len(self._ops)

    def put(self, op: dict[str, Any]) -> None:
        with self.lock:
            if len(self._ops) >= self.maxsize and not self._warned_full:
                self._warned_full = True
                log.warning("MLflow writes: %d queued, the most kept in memory; Tune waits for MLflow", self.maxsize)
            while len(self._ops) >= self.maxsize and not self._stop.is_set():
                self.lock.wait(1.0)
            self._ops.append(op)
        self._start()

    def restore(self, ops: list[dict[str, Any]]) -> None:
        """Put writes an earlier driver left pending ahead of everything queued since."""
        with self.lock:
            self._ops.extendleft(reversed(ops))
        if ops:
            self._start()

    def pending(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self._ops)

    @contextmanager
    def frozen(self) -> Iterator[list[dict[str, Any]]]:
        """The pending writes, with no write completing meanwhile (a consistent snapshot with other state)."""
        with self.lock:
            yield list(self._ops)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gridrun-mlflow-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self.lock:
                while not self._ops and not self._stop.is_set():
                    self.lock.wait(1.0)
                if self._stop.is_set():
                    return
                op = self._ops[0]
            try:
                self._apply(op)
            except Exception as e:
                if not transient(e):
                    log.warning("MLflow %s for trial %s dropped: %s", op.get("op"), op.get("trial"), _line(e))
                    self._pop(op, ok=False)
                    continue
                failures += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning(
                        "MLflow unreachable (%s); %d writes queued, retried in the background while trials go on",
                        _line(e),
                        len(self._ops),
                    )
                delay = min(10.0, 0.5 * 2 ** (failures - 1))
                self._wake.clear()
                self._wake.wait(min(delay, self.probe_s) if self._draining else delay)
                continue
            failures = 0
            if self.failing_since is not None:
                log.warning(
                    "MLflow reachable again after %.0f s; writing the %d queued writes",
                    time.monotonic() - self.failing_since,
                    len(self._ops),
                )
                self.failing_since = None
            self._pop(op, ok=True)

    def _pop(self, op: dict[str, Any], ok: bool) -> None:
        with self.lock:
            if self._ops and self._ops[0] is op:
                self._ops.popleft()
            if ok:
                self.written += 1
                self.last_ok = time.monotonic()
            else:
                self.dropped += 1
            self.lock.notify_all()

    def drain(self, patience_s: float) -> bool:
        """Wait until every write is made; gives up (False) once MLflow has taken nothing for ``patience_s``
        seconds while failing. A server that is slow but answering is waited for; one that is away is tried at
        least every ``probe_s`` seconds meanwhile, and written to as soon as it answers."""
        start = time.monotonic()
        self._draining = True
        self._wake.set()  # a write waiting out a long backoff is tried now, then every ``probe_s``
        try:
            with self.lock:
                if self._ops:
                    self._start()
                while self._ops:
                    if self.failing_since is not None and time.monotonic() - max(start, self.last_ok) > patience_s:
                        return False
                    self.lock.wait(0.2)
            return True
        finally:
            self._draining = False

    def close(self) -> None:
        """Stop the thread (after the write it is making, if any); what is pending stays in ``pending()``."""
        self._stop.set()
        self._wake.set()
        with self.lock:
            self.lock.notify_all()


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def write_spill(path: str | Path, header: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Keep pending writes in ``path``, a local file or a storage URI (whole: a half-written file never
    replaces a whole one)."""
    storage.write_bytes(path, pickle.dumps({"header": header, "ops": ops}))


def replay_spill(path: str | Path) -> int:
    """Write what an earlier driver left in its spill file to MLflow; returns how many writes were made.

    The file goes once everything is written; if MLflow fails again, what is left stays in it and
    :class:`~gridrun.errors.GridrunError` says so in one line.
    """
    from gridrun.errors import GridrunError

    if not storage.is_file(path):
        return 0
    data = pickle.loads(storage.read_bytes(path))
    header, ops = data["header"], data["ops"]
    writer = RunWriter(header["uri"], header["experiment_id"], header["parent_run_id"], header["runs"], resumed=True)
    done = 0
    for i, op in enumerate(ops):
        try:
            writer.apply(op)
            done += 1
        except Exception as e:
            if not transient(e):
                log.warning("MLflow %s for trial %s dropped: %s", op.get("op"), op.get("trial"), _line(e))
                continue
            write_spill(path, {**header, "runs": writer.runs}, ops[i:])
            raise GridrunError(
                f"MLflow at {header['uri']} failed ({_line(e)}); {len(ops) - i} writes are still kept in {path}"
            ) from None
    storage.remove(path)
    return done
