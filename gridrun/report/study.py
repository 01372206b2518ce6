"""Each study's own results table, base model vs tuned adapter, as the studies gridrun reproduces state theirs.

Two Markdown tables from a finished summary (every trial row carries its arm's ``task/<metric>_base``):

- per arm of each searched categorical that changes the eval (squad's ``prompt_format``): base and best trial
  side by side, every task metric the evaluator emits;
- base vs the best trial, one row per task metric, so the per-group metrics an evaluator emits (code's pass
  rate by problem type and difficulty, gsm8k's formats, json's duplicate-object rate) each get their row.

``gridrun report`` prints them (they are in the summary), and they are written to ``report/`` as ``study.md``
and ``study.png`` and logged to the parent run with the other report files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainables.base_scores import eval_paths

__all__ = ["study_tables", "write_study"]

_MD = "study.md"
_PNG = "study.png"


def _fmt(v: Any) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v):
        return "-"
    return f"{v:.3g}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4f}".rstrip("0").rstrip(".")


def _task_metrics(rows: list[dict[str, Any]]) -> list[str]:
    names = {k for r in rows for k in r.get("metrics") or {} if k.startswith("task/")}
    return sorted(k for k in names if not k.endswith(("_base", "_gain")))


def _finished(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished trials in rank order (the summary's trials are sorted best first)."""
    return [r for r in summary["trials"] if r["status"] != "ERROR" and math.isfinite(r["objective"])]


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(b) + " |" for b in body
    ]


def _arm_table(
    rows: list[dict[str, Any]], paths: list[str], choices: list[tuple[Any, ...]], arms: list[dict[str, Any]]
) -> list[str]:
    label = ", ".join(p.rsplit(".", 1)[-1] for p in paths)
    head, cols = ["metric"], []
    for values in choices:
        trials = [r for r in rows if tuple(r["params"].get(p) for p in paths) == values]
        base = next((a["scores"] for a in arms if tuple(a["values"].get(p) for p in paths) == values), None)
        best = trials[0]["metrics"] if trials else {}
        if base is None:  # a summary without the launch's base scores: the trials reported theirs
            base = {k.removesuffix("_base"): v for k, v in best.items() if k.endswith("_base")}
        name = "/".join(str(v) for v in values)
        head += [f"{name}: base", f"{name}: best" + (f" ({trials[0]['trial_id']})" if trials else " (no trial)")]
        cols.append((base, best))
    names = sorted(set(_task_metrics(rows)) | {k for a in arms for k in a["scores"]})
    body = [
        [m, *[x for base, best in cols for x in (_fmt(base.get(m, math.nan)), _fmt(best.get(m, math.nan)))]]
        for m in names
    ]
    return [f"### Per {label}: base model vs best trial", "", *_table(head, body), ""]


def study_tables(summary: dict[str, Any], space: dict[str, Any]) -> str:
    """The study's results tables in Markdown ("" when no trial carries base scores)."""
    rows = [r for r in _finished(summary) if any(k.endswith("_base") for k in r.get("metrics") or {})]
    if not rows:
        return ""
    out = [f"## {summary['name']}: did tuning help?", ""]
    arms = summary.get("base_scores") or []
    cats = sorted({p for a in arms for p in a["values"]}) if arms else []
    if not arms:  # a summary without the launch's arms: the searched categoricals that may change the eval
        cats = [p for p in eval_paths(sorted(space)) if hasattr(space[p], "choices")]
    if cats:
        import itertools

        choices = list(itertools.product(*(space[p].choices for p in cats)))
        out += _arm_table(rows, cats, choices, summary.get("base_scores") or [])
    best = rows[0]
    m = best["metrics"]
    body = [
        [k, _fmt(m.get(f"{k}_base", math.nan)), _fmt(m[k]), _fmt(m[k] - m.get(f"{k}_base", math.nan))]
        for k in _task_metrics([best])
    ]
    out += [f"### Best trial {best['trial_id']} vs base model, every task metric", ""]
    out += _table(["metric", "base", "best", "gain"], body)
    return "\n".join(out)


def write_study(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """``study.md`` (the tables) and ``study.png`` (base vs best on the rates: metrics in [0, 1], not times)."""
    text = summary.get("study") or ""
    rows = [r for r in _finished(summary) if any(k.endswith("_base") for k in r.get("metrics") or {})]
    if not text or not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / _MD
    md.write_text(text + "\n")
    m = rows[0]["metrics"]
    rates = [  # rates and shares; a time in seconds (squad's latency_s) may fall in [0, 1] too but is no rate
        k
        for k in _task_metrics(rows[:1])
        if f"{k}_base" in m and not k.endswith("_s") and all(0 <= m[x] <= 1 for x in (k, f"{k}_base"))
    ]
    if not rates:
        return [md]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rates) + 1.5))
    y = list(range(len(rates)))
    ax.barh([i + 0.2 for i in y], [m[f"{k}_base"] for k in rates], 0.4, label="base model", color="tab:gray")
    ax.barh([i - 0.2 for i in y], [m[k] for k in rates], 0.4, label=f"best trial {rows[0]['trial_id']}")
    ax.set_yticks(y, [k.removeprefix("task/") for k in rates])
    ax.invert_yaxis()
    ax.set_xlabel("score (task metrics in [0, 1])")
    ax.set_title(f"{summary['name']}: base model vs best trial")
    ax.legend(loc="best")
    fig.tight_layout()
    png = out_dir / _PNG
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return [md, png]
