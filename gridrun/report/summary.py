"""End-of-run summary: trials table, best config, Pareto front, importance, where the adapter is, how to open
MLflow."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from forgetting import primary_metric
from gridrun.metrics import feasible, pareto_front, stop_reason
from gridrun.mlflow_view import ui_url
from gridrun.report.gains import add_gains, base_rows, gain_lines, rank_key
from gridrun.storage import join

__all__ = ["format_summary", "importance", "load_summary", "summarize"]


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def summarize(
    spec: Any,
    grid: Any,
    reasons: Mapping[str, str],
    runs: dict[str, str],
    baselines: Mapping[str, Any],
    best_checkpoint: Callable[[str], Any] | None = None,
    retries: Mapping[str, int] | None = None,
    locate: Callable[[Any], str] | None = None,
    trained: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Plain-data summary of a finished ResultGrid (JSON-serialisable).

    A trial is summed up by its best checkpoint by objective, the adapter it ships (logged to MLflow,
    registered, exported): its task metric, forgetting and objective are those of that checkpoint, and so are
    the best trial and the Pareto front. ``last`` keeps the final eval round; ``trained`` how far it got.

    Args:
        baselines: the base model's value of each forgetting measure (``forgetting.Baselines.to_json``).
        best_checkpoint: trial id -> its best kept checkpoint (``gridrun.checkpoints.Saved``) or None.
        retries: trial id -> times it was retried from its last checkpoint after its worker or node died.
        locate: a Tune checkpoint -> where it is (``gridrun.storage.checkpoint_location``: a URI on an object
            store, whose checkpoints know only their path inside the bucket); default its path.
        trained: trial id -> the furthest ``samples_seen`` the driver saw it report (what MLflow holds): Tune's
            last result and its result files can stop short of it when a stopper or the time budget ended the
            trial while its last rounds were in flight.
    """
    where = locate or (lambda checkpoint: str(checkpoint.path))
    metric, forget = spec.objective.metric, primary_metric(spec)
    rows: list[dict[str, Any]] = []
    for r in grid:
        m = r.metrics or {}
        tid = m.get("trial_id") or Path(r.path).name
        reason = f"error: {type(r.error).__name__}" if r.error is not None else stop_reason(reasons, tid, m)
        last = {k: v for k, v in m.items() if (isinstance(v, int | float) and "/" in k) or k == "objective"}
        saved = best_checkpoint(tid) if best_checkpoint is not None else None
        at = saved.metrics if saved is not None else last
        at_path = where(saved.checkpoint) if saved is not None else None
        if at_path is None and r.checkpoint is not None:
            at_path = where(r.checkpoint)
        adapter = join(at_path, "adapter") if at_path is not None else None
        rows.append(
            {
                "trial_id": tid,
                "status": "ERROR" if r.error is not None else "TERMINATED",
                "params": dict(r.config or {}),
                "task": _num(at.get(metric)),
                "forget_delta": _num(at.get(forget)),  # forgetting.primary's metric
                "objective": _num(saved.objective if saved is not None else at.get("objective")),
                "samples_seen": at.get("samples_seen", m.get("samples_seen")),
                "trained": m.get("samples_seen"),
                "train_samples": m.get("data/train_samples"),
                "stop_reason": reason,
                "retries": (retries or {}).get(tid, 0),
                "adapter": adapter,
                "best_checkpoint": (
                    {"objective": saved.objective, "path": at_path, "metrics": saved.metrics} if saved else None
                ),
                "mlflow_run_id": runs.get(tid),
                "metrics": dict(at),
                "last": {
                    "task": _num(m.get(metric)),
                    "forget_delta": _num(m.get(forget)),
                    "objective": _num(m.get("objective")),
                },
                "curve": _curve(r, metric, forget),
            }
        )
        row = rows[-1]
        # Tune's last result can lack the trial's keys, or stop short of its last round (a trial a stopper ended)
        seen = [p[0] for p in row["curve"] if math.isfinite(p[0])]
        seen += [v for v in (row["trained"], (trained or {}).get(tid)) if isinstance(v, int | float)]
        row["trained"] = max(seen) if seen else row["samples_seen"]
        if isinstance(row["trained"], float) and row["trained"].is_integer():
            row["trained"] = int(row["trained"])
    min_gain = spec.objective.min_gain
    add_gains(rows, metric, spec.objective.direction, min_gain)
    rows.sort(key=lambda x: rank_key(x, min_gain))
    ok = [x for x in rows if x["status"] != "ERROR" and math.isfinite(x["objective"])]
    best = min(ok, key=lambda x: rank_key(x, min_gain)) if ok else None
    sign = 1 if spec.objective.direction == "max" else -1
    infeasible: list[str] = []
    if spec.objective.mode == "constrained":  # the best is the best task metric among trials within the budget
        for x in rows:
            x["feasible"] = feasible(x["forget_delta"], spec.forgetting.budget)
        infeasible = [x["trial_id"] for x in rows if not x["feasible"]]
        pool = [x for x in ok if x["feasible"]]
        best = max(pool, key=lambda x: sign * x["task"]) if pool else None
    front = pareto_front([(sign * x["task"], x["forget_delta"]) for x in ok])
    return {
        "name": spec.name,
        "objective_metric": metric,
        "mode": spec.objective.mode,
        "penalty": spec.objective.penalty,
        "forget_metric": forget,
        "baselines": dict(baselines),
        "direction": spec.objective.direction,
        "min_gain": min_gain,
        "trials": rows,
        "best": best,
        "pareto_front": [ok[i]["trial_id"] for i in front],
        **(
            {"forgetting_budget": spec.forgetting.budget, "infeasible": infeasible}
            if spec.objective.mode == "constrained"
            else {}
        ),
    }


def _curve(result: Any, metric: str, forget: str) -> list[list[float]]:
    """[samples_seen, objective, task, forgetting.primary's metric] per eval round, from the trial's results."""
    try:
        df = result.metrics_dataframe
    except Exception:
        return []
    if df is None or "samples_seen" not in df:
        return []
    cols = ["samples_seen", "objective", metric, forget]
    return [[_num(row.get(c)) for c in cols] for row in df.to_dict("records")]


def importance(summary: dict[str, Any], space: dict[str, Any]) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched value for the objective (needs ≥ 3 finished trials)."""
    import optuna

    from gridrun.spec.space import to_optuna

    searched, _ = to_optuna(space)
    rows = [r for r in summary["trials"] if math.isfinite(r["objective"]) and set(searched) <= set(r["params"])]
    if len(searched) < 1 or len(rows) < 3:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in rows:
        study.add_trial(
            optuna.trial.create_trial(
                params={k: r["params"][k] for k in searched}, distributions=searched, value=r["objective"]
            )
        )
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError):  # e.g. all objectives equal
        return {}
    return {k: float(v) for k, v in imp.items()}


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
        "gain",
        summary.get("forget_metric", "forgetting"),
        "objective",
        "best at",
        "trained",
        "stopped by",
    ]
    body = [
        [
            r["trial_id"],
            r["status"],
            *[_fmt(r["params"].get(k)) for k in keys],
            _fmt(r["task"]),
            _fmt(r.get("gain", math.nan)),
            _fmt(r["forget_delta"]),
            _fmt(r["objective"]),
            _fmt(r["samples_seen"]),
            _fmt(r.get("trained", r["samples_seen"])),
            r["stop_reason"] + (f" (retried {r['retries']}x)" if r.get("retries") else ""),
        ]
        for r in rows
    ]
    body += [  # the base model, as a trial starts (untrained adapter): what every gain is measured from
        ["base", "-", *[_fmt(b["params"].get(k)) if k in b["params"] else "" for k in keys], _fmt(b["task"]), *"------"]
        for b in base_rows(rows, summary.get("base_scores"), summary["objective_metric"])
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *(line(b) for b in body)]
    out += ["(each trial at its best checkpoint by objective, the adapter it ships; samples seen there and in all)", ""]
    best = summary.get("best")
    if best:
        forget = summary.get("forget_metric", "forgetting")
        out.append(
            f"best trial {best['trial_id']}: objective {_fmt(best['objective'])} "
            f"({summary['objective_metric']} {_fmt(best['task'])}, {forget} {_fmt(best['forget_delta'])})"
        )
        out.append("best config: " + json.dumps(best["params"], default=str))
        out.append(f"best adapter: {best['adapter']}")
        out += gain_lines(summary, _fmt)
    elif "infeasible" in summary:
        forget = summary.get("forget_metric", "forgetting")
        out.append(f"no trial kept {forget} within the budget {summary['forgetting_budget']}")
    else:
        out.append("no trial finished with a finite objective")
    if summary.get("infeasible"):
        forget = summary.get("forget_metric", "forgetting")
        out.append(f"infeasible ({forget} > {summary['forgetting_budget']}): " + ", ".join(summary["infeasible"]))
    if summary.get("pareto_front"):
        out.append("pareto front (task vs forgetting): " + ", ".join(summary["pareto_front"]))
    if summary.get("importance"):
        out.append(
            "importance for the objective: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items())
        )
    if summary.get("registered"):
        reg = summary["registered"]
        out.append(f"registered: model '{reg['name']}' versions {', '.join(reg['versions'])}")
    if summary.get("interrupted"):
        left = summary["interrupted"]
        out.append(f"interrupted: {len(left['unfinished'])} trials did not finish; continue with: {left['resume']}")
    if (summary.get("mlflow") or {}).get("pending"):
        out.append(f"MLflow missed some writes (server away): {summary['mlflow']['pending']}")
    if summary.get("study"):  # base model vs tuned adapter, the study's own tables (gridrun.report.study)
        out += ["", summary["study"], ""]
    if summary.get("report_dir"):
        out.append(f"plots: {summary['report_dir']}")
    ml = summary.get("mlflow") or {}
    if ml:
        out.append(
            f"MLflow: parent run {ml.get('parent_run_id')} in {ml.get('uri')}; open the UI with: "
            f"gridrun ui --tracking-uri {ml.get('uri')}"
        )
        out.append(f"  then: {ui_url(str(ml.get('experiment_id')), ml.get('parent_run_id'))}")
    if summary.get("experiment_dir"):
        out.append(f"experiment folder: {summary['experiment_dir']}")
    return "\n".join(out)


def load_summary(experiment_dir: str | Path) -> dict[str, Any]:
    """The summary an experiment wrote to its folder (a local path or a storage URI)."""
    from gridrun import storage as store
    from gridrun.errors import GridrunError

    store.check_storage(str(experiment_dir), "experiment folder")
    p = store.join(store.location(experiment_dir), "gridrun_summary.json")
    try:
        return dict(json.loads(store.read_text(p)))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise GridrunError(
            f"no gridrun summary in {experiment_dir} (is it an experiment folder that finished?)"
        ) from None
    except OSError as e:  # an object store that cannot be read: a missing bucket, no credentials
        raise GridrunError(f"{experiment_dir}: cannot read its summary ({store.one_line(e)})") from None
