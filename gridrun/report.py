"""End-of-run summary: trials table, best config, Pareto front, where the adapter is, how to open MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gridrun.objective import pareto_front

__all__ = ["ProgressPrinter", "format_summary", "load_summary", "summarize"]


class ProgressPrinter:
    """One line per trial start and end (Tune's own tables are switched off: too much for a terminal)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from ray.tune import Callback

        class _Printer(Callback):
            def __init__(self, metric: str, reasons: dict[str, str]) -> None:
                self.metric, self.reasons, self.done = metric, reasons, 0

            def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
                print(f"[gridrun] trial {trial.trial_id} started: {params}", flush=True)

            def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                self.done += 1
                m = trial.last_result or {}
                why = self.reasons.get(trial.trial_id) or ("completed" if m.get("progress", 0) >= 1 else "stopped")
                print(
                    f"[gridrun] trial {trial.trial_id} done ({self.done}/{len(trials)}): "
                    f"{self.metric} {_fmt(_num(m.get(self.metric)))}, forget/delta "
                    f"{_fmt(_num(m.get('forget/delta')))}, objective {_fmt(_num(m.get('objective')))} "
                    f"at {m.get('samples_seen')} samples — {why}",
                    flush=True,
                )

            def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                self.done += 1
                print(f"[gridrun] trial {trial.trial_id} failed; see {trial.path}/error.txt", flush=True)

        return _Printer(*args, **kwargs)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def summarize(spec: Any, grid: Any, reasons: dict[str, str], runs: dict[str, str], base_loss: float) -> dict[str, Any]:
    """Plain-data summary of a finished ResultGrid (JSON-serialisable)."""
    metric = spec.objective.metric
    rows: list[dict[str, Any]] = []
    for r in grid:
        m = r.metrics or {}
        tid = m.get("trial_id") or Path(r.path).name
        if r.error is not None:
            reason = f"error: {type(r.error).__name__}"
        else:
            reason = reasons.get(tid) or ("completed" if m.get("progress", 0) >= 1 else "stopped")
        adapter = None
        if r.checkpoint is not None:
            adapter = str(Path(r.checkpoint.path) / "adapter")
        rows.append(
            {
                "trial_id": tid,
                "status": "ERROR" if r.error is not None else "TERMINATED",
                "params": dict(r.config),
                "task": _num(m.get(metric)),
                "forget_delta": _num(m.get("forget/delta")),
                "objective": _num(m.get("objective")),
                "samples_seen": m.get("samples_seen"),
                "train_samples": m.get("data/train_samples"),
                "stop_reason": reason,
                "adapter": adapter,
                "mlflow_run_id": runs.get(tid),
                "metrics": {
                    k: v for k, v in m.items() if (isinstance(v, int | float) and "/" in k) or k == "objective"
                },
            }
        )
    rows.sort(key=lambda x: -x["objective"] if math.isfinite(x["objective"]) else math.inf)
    ok = [x for x in rows if x["status"] != "ERROR" and math.isfinite(x["objective"])]
    best = max(ok, key=lambda x: x["objective"]) if ok else None
    sign = 1 if spec.objective.direction == "max" else -1
    front = pareto_front([(sign * x["task"], x["forget_delta"]) for x in ok])
    return {
        "name": spec.name,
        "objective_metric": metric,
        "mode": spec.objective.mode,
        "penalty": spec.objective.penalty,
        "base_probe_loss": base_loss,
        "trials": rows,
        "best": best,
        "pareto_front": [ok[i]["trial_id"] for i in front],
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def format_summary(summary: dict[str, Any]) -> str:
    """The table a person reads at the end of ``gridrun launch`` (and from ``gridrun report``)."""
    rows = summary["trials"]
    keys = sorted({k for r in rows for k in r["params"]})
    head = [
        "trial",
        "status",
        *keys,
        summary["objective_metric"],
        "forget/delta",
        "objective",
        "samples",
        "stopped by",
    ]
    body = [
        [
            r["trial_id"],
            r["status"],
            *[_fmt(r["params"].get(k)) for k in keys],
            _fmt(r["task"]),
            _fmt(r["forget_delta"]),
            _fmt(r["objective"]),
            _fmt(r["samples_seen"]),
            r["stop_reason"],
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *(line(b) for b in body), ""]
    best = summary.get("best")
    if best:
        out.append(
            f"best trial {best['trial_id']}: objective {_fmt(best['objective'])} "
            f"({summary['objective_metric']} {_fmt(best['task'])}, forget/delta {_fmt(best['forget_delta'])})"
        )
        out.append("best config: " + json.dumps(best["params"], default=str))
        out.append(f"best adapter: {best['adapter']}")
    else:
        out.append("no trial finished with a finite objective")
    if summary.get("pareto_front"):
        out.append("pareto front (task vs forgetting): " + ", ".join(summary["pareto_front"]))
    ml = summary.get("mlflow") or {}
    if ml:
        out.append(
            f"MLflow: parent run {ml.get('parent_run_id')} in {ml.get('uri')}; open the UI with: "
            f"gridrun ui --tracking-uri {ml.get('uri')}"
        )
    if summary.get("experiment_dir"):
        out.append(f"experiment folder: {summary['experiment_dir']}")
    return "\n".join(out)


def load_summary(experiment_dir: str | Path) -> dict[str, Any]:
    from gridrun.errors import GridrunError

    p = Path(experiment_dir).expanduser() / "gridrun_summary.json"
    if not p.is_file():
        raise GridrunError(f"no gridrun summary in {experiment_dir} (is it an experiment folder that finished?)")
    return json.loads(p.read_text())
