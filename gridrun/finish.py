"""How an experiment ends: ``Tuner.fit`` under gridrun's Ctrl-C handling, the summary written, MLflow closed — or
left for ``gridrun sync`` when MLflow is away — and ``sync`` itself.

Ctrl-C once: Tune's own SIGINT handler stops the run cleanly (a last experiment snapshot, trials stopped,
``on_experiment_end``), the unfinished trials' runs are closed KILLED, the summary of the finished trials is
written and ``gridrun resume`` continues the rest. Tune then puts back the SIGINT handler it found, gridrun's,
so a second Ctrl-C exits at once: what that leaves is what a killed driver leaves, which resume handles exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridrun import storage as store
from gridrun.errors import GridrunError
from gridrun.experiment import ExperimentMeta

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec

__all__ = ["SUMMARY_FILE", "fit_and_report", "quiet_tune_restore_hint", "sync"]

log = logging.getLogger("gridrun")

SUMMARY_FILE = "gridrun_summary.json"


@contextlib.contextmanager
def _second_ctrl_c_exits(tracker: Any, exp_dir: str) -> Iterator[None]:
    """While Tune runs: the SIGINT handler Tune puts back after the first Ctrl-C exits at once (writes MLflow
    has not taken yet are kept in the spill file first: a local write, no network, unless the experiment is on
    an object store, where it is one upload)."""
    tune_handles_it = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0")
    if threading.current_thread() is not threading.main_thread() or not tune_handles_it:
        yield  # no Tune handler in front of this one: the first Ctrl-C would exit at once
        return

    def exit_now(signum: int, frame: Any) -> None:
        with contextlib.suppress(Exception):
            tracker.spill()
        print(f"\ngridrun: interrupted twice: exiting now; continue with: gridrun resume {exp_dir}", file=sys.stderr)
        sys.stderr.flush()
        # The processes this driver started (a local Ray: GCS, raylet, its agents and workers) go with it: Ray's
        # raylet dies with its parent, but its agents outlive it for minutes.
        with contextlib.suppress(Exception):
            import psutil

            for p in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        os._exit(130)

    before = signal.signal(signal.SIGINT, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class _NoRestoreHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(path=..., trainable=...)" after a Ctrl-C: gridrun
    prints its own way on (``gridrun resume DIR``, which also replays MLflow writes and reopens the runs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resume experiment with:" not in str(record.msg)


def quiet_tune_restore_hint() -> None:
    target = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in target.filters):
        target.addFilter(_NoRestoreHint())


def _wall_so_far(exp_dir: str, session_s: float) -> dict[str, float]:
    """A resumed experiment's wall time: the earlier sessions' (from the summary an interrupted one wrote) plus
    this one's, which is kept as ``wall_s_session``. A driver that was killed wrote none: its time is unknown."""
    try:
        before = float(json.loads(store.read_text(store.join(exp_dir, SUMMARY_FILE))).get("wall_s") or 0.0)
    except (OSError, ValueError, TypeError):
        before = 0.0
    return {"wall_s": round(before + session_s, 1), "wall_s_session": session_s}


def _write_summary(exp_dir: str, summary: dict[str, Any]) -> None:
    store.write_text(store.join(exp_dir, SUMMARY_FILE), json.dumps(summary, indent=2, default=str))


def fit_and_report(
    spec: ExperimentSpec,
    tuner: Any,
    tracker: Any,
    meta: ExperimentMeta,
    exp_dir: str,
    quiet: bool,
    budget: Any = None,
) -> dict[str, Any]:
    """Run ``tuner`` to its end (or to a Ctrl-C), then write and print the summary and close the MLflow parent.

    An interrupted experiment's summary holds its finished trials and ``interrupted`` (the others, and how to
    resume); its parent run is closed KILLED, and ``gridrun resume`` reopens it. With a time budget
    (:class:`gridrun.stopping.TimeBudget`), its spent time goes into the experiment's metadata (resume gets the
    rest), and trials it ended before their first recorded round are left out (``time_budget.not_run``).
    """
    from gridrun.report import format_summary, importance, summarize, write_report
    from gridrun.report.study import study_tables, write_study
    from gridrun.tracking import close_parent

    parent = meta.mlflow.parent_run_id
    quiet_tune_restore_hint()
    t0 = time.time()
    try:
        with _second_ctrl_c_exits(tracker, exp_dir):
            grid = tuner.fit()
    except BaseException:
        close_parent(spec.tracking.uri, parent, "KILLED")
        raise
    not_run = set(budget.not_run) if budget is not None else set()
    unfinished = set(tracker.unfinished) - not_run
    left_out = unfinished | not_run
    finished = lambda r: r.error is not None or (r.metrics and r.metrics.get("trial_id") not in left_out)  # noqa: E731
    results = [r for r in grid if not left_out or finished(r)]
    summary = summarize(
        spec,
        results,
        tracker.reasons,
        tracker.runs,
        meta.baselines,
        tracker.keeper.best,
        tracker.retries,
        locate=lambda checkpoint: store.checkpoint_location(exp_dir, checkpoint),
        trained=tracker.trained,
    )
    summary.update(
        {
            "experiment": meta.experiment,
            "experiment_dir": exp_dir,
            "mlflow": asdict(meta.mlflow),
            "wall_s": round(time.time() - t0, 1),
            "base_scores": meta.base_scores,  # the base model's task scores, one per eval arm
        }
    )
    if tracker._resumed:
        summary.update(_wall_so_far(exp_dir, summary["wall_s"]))
    summary["importance"] = importance(summary, spec.search.space)
    summary["report_dir"] = store.join(exp_dir, "report")
    summary["study"] = study_tables(summary, spec.search.space)
    if tracker._resumed:
        summary["resumed"] = True
    if budget is not None:
        spent = {"budget_s": budget.budget_s, "spent_s": round(budget.spent_s, 1)}
        summary["time_budget"] = {**spent, "ended_search": budget.expired, "not_run": sorted(not_run)}
        replace(meta, time_budget=spent).write(exp_dir)
    if unfinished:
        summary["interrupted"] = {"unfinished": sorted(unfinished), "resume": f"gridrun resume {exp_dir}"}
    if tracker.pending():
        summary["mlflow"]["pending"] = f"{tracker.pending()} writes; gridrun sync {exp_dir}"
    _write_summary(exp_dir, summary)
    # on an object store the plots are drawn in a temporary folder, uploaded when MLflow has logged them
    with store.local_dir(summary["report_dir"], upload=True) as report_dir:
        plots = write_report(summary, report_dir) + write_study(summary, report_dir)
        if unfinished:
            close_parent(spec.tracking.uri, parent, "KILLED")
        elif not tracker.pending():
            try:
                _finish_in_mlflow(spec, meta, summary, exp_dir, plots)
            except Exception as e:  # the summary is on storage; MLflow gets it from `gridrun sync`
                log.warning("could not close the experiment in MLflow (%s); `gridrun sync %s` does it", e, exp_dir)
    if not quiet:
        print(format_summary(summary), flush=True)
    return summary


def _finish_in_mlflow(
    spec: ExperimentSpec, meta: ExperimentMeta, summary: dict[str, Any], exp_dir: str, plots: list[Path]
) -> None:
    """Child runs of trials lost with an interrupted driver dropped (a resumed experiment), the adapters worth
    shipping registered (once), the parent run finished with the summary and plots."""
    from gridrun.tracking import drop_orphans, finish_parent, register_adapters

    uri, parent = spec.tracking.uri, meta.mlflow.parent_run_id
    if summary.get("resumed"):
        dropped = drop_orphans(uri, parent, {r["trial_id"] for r in summary["trials"]})
        if dropped:
            log.warning("removed %d MLflow runs of trials lost with the interrupted driver", len(dropped))
    # Register what is worth shipping: the best trial, or every Pareto-optimal trial in pareto mode.
    if spec.tracking.log_adapters and summary.get("best") and "registered" not in summary:
        ids = set(summary["pareto_front"]) if spec.objective.mode == "pareto" else {summary["best"]["trial_id"]}
        rows = [r for r in summary["trials"] if r["trial_id"] in ids]
        name = spec.tracking.experiment or spec.name
        try:
            summary["registered"] = {"name": name, "versions": register_adapters(uri, name, rows)}
        except Exception as e:  # the experiment's record matters more than the registry entry
            log.warning("could not register adapters in MLflow: %s", e)
    _write_summary(exp_dir, summary)
    finish_parent(uri, parent, summary, plots)


def sync(experiment_dir: str | Path) -> dict[str, Any]:
    """Write to MLflow what an experiment could not while its server was away: the spill file's writes, then, for
    a finished experiment whose parent run is still open, its end (registration, summary, plots).

    Returns ``{"written": writes made, "closed": whether the parent run was finished now}``.
    """
    from gridrun.run_writer import mlflow_client
    from gridrun.validate import check_tracking_uri
    from gridrun.writer import SPILL_FILE, replay_spill

    exp_dir = store.location(experiment_dir)
    store.check_storage(exp_dir, "sync")
    meta = ExperimentMeta.read(exp_dir)
    spec = meta.experiment_spec()
    check_tracking_uri(spec.tracking.uri)
    written = replay_spill(store.join(exp_dir, SPILL_FILE))
    closed = False
    if store.is_file(store.join(exp_dir, SUMMARY_FILE)):
        summary = json.loads(store.read_text(store.join(exp_dir, SUMMARY_FILE)))
        parent = meta.mlflow.parent_run_id
        status = mlflow_client(spec.tracking.uri).get_run(parent).info.status
        if not summary.get("interrupted") and status != "FINISHED":
            summary["mlflow"].pop("pending", None)
            try:
                with store.local_dir(store.join(exp_dir, "report")) as report_dir:
                    files = sorted(report_dir.glob("*.png")) + sorted(report_dir.glob("*.md"))
                    _finish_in_mlflow(spec, meta, summary, exp_dir, files)
            except Exception as e:
                raise GridrunError(f"MLflow at {spec.tracking.uri}: could not close the experiment ({e})") from None
            closed = True
    return {"written": written, "closed": closed}
