"""Report plots (matplotlib, headless): what a person looks at after a search."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["MAX_LABELS", "pareto_figure", "write_report"]

#: Above this many trials only the Pareto front and the best trial are labelled on ``pareto.png``: hundreds of
#: labels cannot be read, and adjustText's overlap search grows with the square of the overlapping pairs (200
#: clustered labels took over a minute and gigabytes in one pass).
MAX_LABELS = 40


def write_report(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG plots written to ``out_dir``: task vs forgetting with the Pareto front, objective vs each searched
    value, learning curves, importance. Returns their paths (``tracking.finish_parent`` logs them to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_save(pareto_figure(summary), out_dir / "pareto.png")]

    keys = sorted({k for r in summary["trials"] for k in r["params"]})
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
        for ax, k in zip(axes[0], keys, strict=True):
            pts = [
                (r["params"][k], r["objective"])
                for r in summary["trials"]
                if k in r["params"] and math.isfinite(r["objective"])
            ]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="tab:green")
            if pts and all(isinstance(p[0], int | float) and p[0] > 0 for p in pts) and k.endswith("lr"):
                ax.set_xscale("log")
            ax.set_xlabel(k)
            ax.set_ylabel("objective")
        fig.suptitle("objective vs each searched value")
        paths.append(_save(fig, out_dir / "objective_vs_params.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    colors = [plt.get_cmap("tab20")(i) for i in range(20)]  # one colour per trial up to 20 (tab10 repeats at 10)
    for i, r in enumerate(summary["trials"]):
        c = [p for p in r.get("curve") or [] if math.isfinite(p[0]) and math.isfinite(p[1])]
        if c:
            ax.plot(
                [p[0] for p in c],
                [p[1] for p in c],
                marker=".",
                alpha=0.85,
                color=colors[i % len(colors)],
                label=r["trial_id"],  # the id the console, table and MLflow show
            )
    ax.set_xlabel("samples seen")
    ax.set_ylabel("objective")
    ax.set_title("learning curves (ASHA compares trials on this axis)")
    if len(summary["trials"]) <= 20:
        ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out_dir / "curves.png"))

    imp = summary.get("importance") or {}
    if imp:
        fig, ax = plt.subplots(figsize=(6, 0.6 * len(imp) + 1.5))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="tab:purple")
        ax.set_xlabel("fANOVA importance for the objective")
        paths.append(_save(fig, out_dir / "importance.png"))

    return paths


def pareto_figure(summary: dict[str, Any]) -> Any:
    """Task vs forgetting: a point per trial labelled with its id (labels moved apart; beyond ``MAX_LABELS``
    trials only the best trial's and the front's, at most ``MAX_LABELS`` of those), the Pareto front, the best trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["trials"] if math.isfinite(r["task"]) and math.isfinite(r["forget_delta"])]
    metric = summary["objective_metric"]
    front = set(summary.get("pareto_front") or [])
    best = (summary.get("best") or {}).get("trial_id")

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([r["forget_delta"] for r in rows], [r["task"] for r in rows], c="tab:gray", label="trial")
    fr = sorted((r for r in rows if r["trial_id"] in front), key=lambda r: r["forget_delta"])
    if fr:
        # the attainment staircase: between two front points, the best task reachable is the left one's
        ax.plot(
            [r["forget_delta"] for r in fr],
            [r["task"] for r in fr],
            "o-",
            c="tab:red",
            drawstyle="steps-post",
            label="Pareto front",
        )
    labels: list[Any] = []
    named = {r["trial_id"] for r in (rows if len(rows) <= MAX_LABELS else fr[:MAX_LABELS])} | {best}
    for r in rows:
        if r["trial_id"] == best:
            ax.scatter(
                [r["forget_delta"]],
                [r["task"]],
                s=200,
                facecolors="none",
                edgecolors="tab:blue",
                linewidths=2,
                label=f"best objective ({best})",
            )
        if r["trial_id"] in named:
            labels.append(ax.text(r["forget_delta"], r["task"], r["trial_id"], fontsize=7, alpha=0.8))
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel(
        f"{summary.get('forget_metric', 'forgetting')} (forgetting.primary; 0 is the base model, lower is better)"
    )
    ax.set_ylabel(f"{metric} (at each trial's best checkpoint)")
    ax.set_title(f"{summary['name']}: task vs forgetting")
    ax.legend(loc="best", fontsize=8)
    if labels:
        from adjustText import adjust_text

        fig.tight_layout()  # final axes size first: labels are moved apart in display space
        # labels of close trials would pile up on their points: moved apart, each with a line to its point
        adjust_text(labels, ax=ax, arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
