"""MLflow as the system of record: a parent run per experiment, a child run per trial, driver-side only.

The whole lifecycle lives here: the parent run opened (``start_parent_run``), child runs written by the Tune
callback, the parent closed with the summary, best metrics and report plots (``finish_parent``) or marked
KILLED (``close_parent``), runs an interrupted driver left behind closed (``mark_interrupted``) or dropped
(``drop_orphans``), adapters registered (``register_adapters``), and the summary read back
(``summary_from_mlflow``).

``MLflowTracker`` is a Ray Tune callback; it runs in the driver and hands its writes to one writer thread
(:mod:`gridrun.writer`), so there is exactly one writer (no SQLite locks) whatever the cluster size, and an
unreachable server never holds up Tune. Child runs get every param of the trial's spec, metric curves on the
``samples_seen`` axis (the compute axis ASHA compares trials on, identical across trials whatever their
batch size), the adapter of the trial's best checkpoint (by objective, kept by
:class:`~gridrun.checkpoints.CheckpointKeeper`) as an artifact, and status / stop-reason tags. Checkpoints are
read through Tune's storage filesystem, so an experiment whose storage is an object store uploads them too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from gridrun.metrics import namespaced_metrics, stop_reason
from gridrun.parent_run import (
    close_parent,
    drop_orphans,
    finish_parent,
    mark_interrupted,
    register_adapters,
    summary_from_mlflow,
)
from gridrun.run_writer import RunWriter, mlflow_client
from gridrun.storage import checkpoint_location
from gridrun.writer import OpQueue, write_spill

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
    "run_name",
    "set_experiment_tag",
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
    return mlflow_client(uri)


def _short(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
            mant, exp = f"{v:.1e}".split("e")
            return f"{mant}e{int(exp)}"  # 1.2e-3, not 1.2e-03
        return f"{v:.2g}"
    return str(v)


def run_name(config: dict[str, Any], searched: list[str], trial_id: str) -> str:
    """A child run's name from its searched values, as the MLflow runs table shows it (``lr=1.2e-3 r=8
    ratio=0.58``): each key's shortest unambiguous tail (``train.lr`` → ``lr``, ``data.sample_ratio`` →
    ``ratio``); ``trial-<id>`` when nothing is searched."""
    keys = [k for k in config if k in searched]  # in the search space's order, as the trial's start line
    if not keys:
        return f"trial-{trial_id}"

    def tails(k: str) -> list[str]:
        last = k.rsplit(".", 1)[-1]
        return [last.rsplit("_", 1)[-1], last, k]

    names = {}
    for k in keys:
        others = {t for o in keys if o != k for t in tails(o)}
        names[k] = next(t for t in tails(k) if t not in others)
    return " ".join(f"{names[k]}={_short(config[k])}" for k in keys)


def start_parent_run(
    uri: str,
    experiment: str,
    run_name: str,
    spec_yaml: str,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Create (or reuse) the MLflow experiment and open its parent run; returns (experiment_id, run_id).

    Args:
        params: the spec's fixed settings and searched ranges, so experiments compare by their settings in the UI.
    """
    from mlflow.entities import Param

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    if exp is None or "mlflow.experimentKind" not in exp.tags:
        # MLflow 3 shows experiments of unknown kind as GenAI projects; these are model-training runs.
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    run = client.create_run(exp_id, run_name=run_name, tags={"gridrun.kind": "experiment", **tags})
    items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    for i in range(0, len(items), 100):  # MLflow's per-batch limit
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    client.log_text(run.info.run_id, spec_yaml, "spec.yaml")
    return exp_id, run.info.run_id


def set_experiment_tag(uri: str, experiment_id: str, key: str, value: str) -> None:
    """Set one tag on the MLflow experiment (e.g. gridrun's saved runs-table view, :mod:`gridrun.mlflow_view`)."""
    _client(uri).set_experiment_tag(experiment_id, key, value)


class MLflowTracker(Callback):
    """Driver-side Tune callback writing one child run per trial under the experiment's parent run.

    Callbacks only decide what to write and queue it (:class:`~gridrun.writer.OpQueue`): they never wait for
    MLflow, so an outage costs Tune no time. Only the driver writes; the queue's thread is the one writer.

    Args:
        spill_path: where writes still pending when the experiment ends (MLflow away) are kept for
            ``gridrun resume`` / ``gridrun sync``.
        experiment_dir: the experiment's location (a folder or a URI): the adapter tag names checkpoints there.
        drain_s: at the end, how long to wait for an unreachable MLflow before spilling.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        spec: ExperimentSpec,
        searched: list[str],
        reasons: MutableMapping[str, str],
        keeper: CheckpointKeeper,
        log_adapters: bool = True,
        spill_path: str | Path | None = None,
        drain_s: float = 30.0,
        experiment_dir: str | None = None,
    ) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self.searched = searched
        self.reasons = reasons
        self.keeper = keeper
        self.log_adapters = log_adapters
        self.spill_path = str(spill_path) if spill_path else None  # a local file or a storage URI
        self.drain_s = drain_s
        self.experiment_dir = experiment_dir
        self.retries: dict[str, int] = {}  # trial_id -> times retried after its worker died
        self.unfinished: list[str] = []  # trials still running when the experiment ended (it was interrupted)
        self._queued_step: dict[str, int] = {}  # trial_id -> last samples_seen step queued for MLflow
        self._started: set[str] = set()  # trials with a run or a queued run creation
        self._ended: set[str] = set()  # trials Tune reported complete or errored (in this session or before)
        self._resumed = False
        self._client: Any = None
        self._writer: RunWriter | None = None
        self._queue: OpQueue | None = None

    # The Tuner pickles its callbacks once (tuner.pkl); threads and clients start afresh after unpickling.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_writer": None, "_queue": None}

    @property
    def trained(self) -> dict[str, int]:
        """Trial id -> the furthest ``samples_seen`` it reported that this callback saw (and queued for MLflow)."""
        return dict(self._queued_step)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            self._writer = RunWriter(
                self.uri, self.experiment_id, self.parent_run_id, resumed=self._resumed, client=lambda: self.client
            )
        return self._writer

    @property
    def queue(self) -> OpQueue:
        if self._queue is None:
            self._queue = OpQueue(self.writer.apply)
        return self._queue

    @property
    def runs(self) -> dict[str, str]:
        """trial_id -> MLflow run id, for the runs created so far."""
        return self.writer.runs

    def mark_resumed(self, spill_path: str | Path | None = None) -> None:
        """This tracker continues an interrupted experiment: runs may exist that its state does not know of."""
        self._resumed = self.writer.resumed = True
        if spill_path is not None:
            self.spill_path = str(spill_path)

    # Tune keeps callback state in its experiment snapshot: a resumed experiment continues the same runs, and
    # writes still queued at the snapshot are made then (each is idempotent against what MLflow holds).
    def get_state(self) -> dict[str, Any] | None:
        with self.queue.frozen() as pending:
            runs = dict(self.runs)
        return {
            "runs": runs,
            "reasons": dict(self.reasons),
            "queued_step": dict(self._queued_step),
            "started": sorted(self._started),
            "ended": sorted(self._ended),
            "retries": dict(self.retries),
            "pending": pending,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._resumed = True
        self.writer.restore(state.get("runs", {}))
        self.reasons.update(state.get("reasons", {}))
        self._queued_step.update(state.get("queued_step", {}))
        self._started.update(state.get("started", []), state.get("runs", {}))
        self._ended.update(state.get("ended", []))
        self.retries.update(state.get("retries", {}))
        self.queue.restore(list(state.get("pending", [])))

    def flush(self, patience_s: float | None = None) -> bool:
        """Wait until every queued write is made (False: MLflow took nothing for ``patience_s`` while failing)."""
        return self.queue.drain(self.drain_s if patience_s is None else patience_s)

    def pending(self) -> int:
        return len(self.queue)

    def spill(self) -> str | None:
        """Keep the writes still pending in the spill file (None when there are none, or nowhere to keep them)."""
        ops = self.queue.pending()
        if not ops or self.spill_path is None:
            return None
        header = {
            "uri": self.uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "runs": dict(self.runs),
        }
        write_spill(self.spill_path, header, ops)
        return self.spill_path

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # also for a trial retried after a lost worker, or continued by `gridrun resume`: the same run, reopened
        self._started.add(trial.trial_id)
        self.queue.put(
            {
                "op": "start",
                "trial": trial.trial_id,
                "name": run_name(trial.config, self.searched, trial.trial_id),
                "tags": {
                    "gridrun.kind": "trial",
                    "gridrun.searched": ",".join(self.searched),
                    "gridrun.status": "RUNNING",
                },
                "params": flatten(self.spec.with_params(trial.config).trial_dict()),
            }
        )

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        step = int(result.get("samples_seen", result.get("training_iteration", 0)))
        if step <= self._queued_step.get(trial.trial_id, -1):
            return  # reported again by a trial continuing from its checkpoint: already queued, identically
        self._queued_step[trial.trial_id] = step
        metrics = {k: v for k, v in namespaced_metrics(result).items() if math.isfinite(v)}
        if metrics:
            ts = int(time.time() * 1000)
            self.queue.put({"op": "metrics", "trial": trial.trial_id, "step": step, "ts": ts, "metrics": metrics})

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        n = self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self.queue.put({"op": "tags", "trial": trial.trial_id, "tags": {"gridrun.retries": n}})

    def _finish(self, trial: Any, status: str, mlflow_status: str, reason: str) -> None:
        tags: dict[str, Any] = {"gridrun.status": status, "gridrun.stop_reason": reason}
        if trial.trial_id in self.retries:
            tags["gridrun.retries"] = self.retries[trial.trial_id]
        best = self.keeper.best(trial.trial_id)
        saved = best or self.keeper.latest(trial.trial_id)
        if saved is not None:
            where = getattr(self, "experiment_dir", None)  # a tracker pickled before it had one: None
            tags["gridrun.adapter_checkpoint"] = checkpoint_location(where, saved.checkpoint) if where else saved.path
        if best is not None:
            tags["gridrun.adapter_objective"] = f"{best.objective:.6g}"
            tags["gridrun.adapter_samples_seen"] = str(best.metrics.get("samples_seen"))
        checkpoint = saved.checkpoint if saved is not None and self.log_adapters else None
        self._started.add(trial.trial_id)
        self._ended.add(trial.trial_id)
        self.queue.put(
            {"op": "finish", "trial": trial.trial_id, "status": mlflow_status, "tags": tags, "checkpoint": checkpoint}
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        reason = stop_reason(self.reasons, trial.trial_id, trial.last_result)
        self._finish(trial, "TERMINATED", "FINISHED", reason)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", "FAILED", "error")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Close runs of trials that did not finish (an interrupted experiment): KILLED, never left RUNNING; then
        wait for MLflow to take every write, or keep what it could not take in the spill file."""
        # Tune marks the trials it stops on its way out (Ctrl-C) TERMINATED without completing them: the trials
        # never reported complete or errored are the unfinished ones (and `gridrun resume` continues them)
        self.unfinished = [t.trial_id for t in trials if t.trial_id not in self._ended]
        for tid in self.unfinished:
            if tid in self._started:
                self.queue.put({"op": "kill", "trial": tid})
        if self.flush():
            self.queue.close()
            return
        self.queue.close()
        where = self.spill()
        log.warning(
            "MLflow at %s unreachable: %d writes kept in %s; `gridrun sync %s` writes them (so does `gridrun "
            "resume`); trial results and checkpoints are intact in the experiment folder",
            self.uri,
            self.pending(),
            where,
            where.rsplit("/", 1)[0] if where else "DIR",
        )
