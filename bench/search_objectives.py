"""Search that treats forgetting as what it is, on the replay table: two objectives, a constraint, a warm start.

The same recorded curves and seeds as ``bench/search_efficiency.py`` (its BASE overrides of the demo spec, 16
trials, 2 at a time), run through the Ray-free loop ``bench/replay/simulate.py`` with gridrun's own searcher,
ASHA/MOASHA and stoppers. Compute is samples seen summed over trials, as a share of the full grid's.

* pareto: the hypervolume of the (task ↑, forget/delta ↓) front of every result reported so far, against compute,
  with the reference point (task 0, forget/delta ``REF_FORGETTING``); Optuna's ``compute_hypervolume``.
* constrained: compute until a result within 2% of the best task metric among the table's results with
  forget/delta <= ``BUDGET`` (and itself within the budget).
* warm start: a second table that is the first with the objective recomputed under another penalty
  (``WARM_PENALTY``; re-recording the grid with another model seed costs ~30 min on 2 cores). Each seed's first
  study runs the default on the recorded table; its trials (the best result by objective of each, as a summary
  has them) seed the same seed's study on the second table through ``gridrun.warm_start.warm_trials``.
* levers: TPE's startup trials, multivariate and constant_liar, ASHA's grace and reduction, the budget and its
  patience, one at a time around the shipped default, for its goal (2% of best in >= 90% of seeds within 15%).

    python bench/search_objectives.py            # ~5 min on a shared 2-core machine (the levers most of it)
    python bench/search_objectives.py --seeds 3  # a quick look

Merges ``objectives`` into ``bench/results/search_efficiency.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay.record import demo_spec  # noqa: E402
from bench.replay.simulate import simulate  # noqa: E402
from bench.replay.trainable import Table, load_table  # noqa: E402
from bench.search_efficiency import BASE, RESULTS, TOLERANCE, _finite, _percentiles, curve, first_compute  # noqa: E402
from gridrun.metrics import feasible, penalized  # noqa: E402

#: the replay table's forgetting column (the demo's forgetting.primary: the probe)
FORGETTING_METRIC = "forget/delta"

TASK = "task/format_success"
#: Hypervolume reference: no task success, forget/delta at the demo's budget (more forgetting counts for nothing).
REF_FORGETTING = 1.0
#: The constrained study's budget on forget/delta.
BUDGET = 0.25
#: The second table's penalty (the recorded objective uses the demo's, 0.5).
WARM_PENALTY = 2.0
PARETO: dict[str, list[str]] = {
    "scalar TPE + ASHA (default)": [],
    "random + ASHA": ["search.sampler=random", "forgetting.budget=null"],
    "NSGA-II, no pruning": ["objective.mode=pareto", "search.sampler=nsga2", "scheduler.type=none"],
    "MO-TPE + MOASHA (new)": ["objective.mode=pareto"],
    "NSGA-II + MOASHA (new)": ["objective.mode=pareto", "search.sampler=nsga2"],
}
#: Levers tried on the shipped default (the demo's values): spec overrides, and ``tpe.<kwarg>`` for the
#: TPESampler arguments gridrun fixes (multivariate, constant_liar), forced through a wrapped sampler class.
LEVERS = [
    [],
    *[[f"search.n_startup_trials={n}"] for n in (2, 3, 4, 8, 10)],
    ["tpe.multivariate=False"],
    ["tpe.constant_liar=False"],
    ["tpe.multivariate=False", "tpe.constant_liar=False"],
    *[[f"scheduler.grace_period={g}"] for g in (256, 384, 640, 768)],
    *[[f"scheduler.reduction_factor={r}"] for r in (3, 4)],
    *[[f"forgetting.patience={p}"] for p in (1, 3)],
    *[[f"forgetting.budget={b}"] for b in (0.15, 0.5, 1.0)],
    ["search.n_startup_trials=2", "forgetting.patience=1"],
]
#: Held-out seeds for the levers (as search_efficiency.py's held-out check).
HOLDOUT = range(1000, 1100)
CONSTRAINED: dict[str, list[str]] = {
    "constrained TPE + ASHA on the task (new)": ["objective.mode=constrained", f"forgetting.budget={BUDGET}"],
    f"penalized TPE + ASHA, budget {BUDGET}": [f"forgetting.budget={BUDGET}"],
    "penalized default (budget 1.0)": [],
    "random + ASHA": ["search.sampler=random", "forgetting.budget=null"],
}


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Of (task, forgetting) points against (0, REF_FORGETTING), by Optuna's reference implementation."""
    from optuna._hypervolume import compute_hypervolume  # private module: Optuna's own WFG hypervolume

    inside = [(-t, f) for t, f in points if t > 0 and f < REF_FORGETTING]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.array(inside), np.array([0.0, REF_FORGETTING])))


def hv_curve(results: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, float]]:
    """(compute so far, hypervolume of every result so far) after each result."""
    steps = curve([(tid, int(r["samples_seen"]), 0.0) for tid, r in results])
    front: list[tuple[float, float]] = []
    hv, out = 0.0, []
    for (compute, _), (_, r) in zip(steps, results, strict=True):
        p = (float(r[TASK]), float(r[FORGETTING_METRIC]))
        if not any(q[0] >= p[0] and q[1] <= p[1] for q in front):  # a new non-dominated point: the front grows
            front = [q for q in front if not (p[0] >= q[0] and p[1] <= q[1])] + [p]
            hv = hypervolume(front)
        out.append((compute, hv))
    return out


def at(c: list[tuple[int, float]], compute: float) -> float:
    return max((v for x, v in c if x <= compute), default=0.0)


def run(overrides: list[str], table: Table, seed: int, warm: list[Any] | None = None) -> tuple[list, dict]:
    results: list[tuple[str, dict[str, Any]]] = []
    configs: dict[str, dict[str, Any]] = {}
    simulate(demo_spec([*BASE, *overrides, f"search.seed={seed}"]), table, warm, results, configs)
    return results, configs


def pareto(table: Table, seeds: range, grid: int) -> dict[str, Any]:
    grid_hv = hypervolume([(r[TASK], r[FORGETTING_METRIC]) for rows in table.values() for r in rows])
    curves = {name: [hv_curve(run(o, table, s)[0]) for s in seeds] for name, o in PARETO.items()}
    scalar_final = _percentiles([c[-1][1] for c in curves["scalar TPE + ASHA (default)"]])["median"]
    out = {}
    for name, cs in curves.items():
        reach = [first_compute(c, scalar_final) / grid for c in cs]
        out[name] = {
            "overrides": ", ".join(PARETO[name]) or "demo values",
            "hv_at_25pct_grid": _percentiles([at(c, 0.25 * grid) for c in cs]),
            "hv_at_15pct_grid": _percentiles([at(c, 0.15 * grid) for c in cs]),
            "hv_at_end": _percentiles([c[-1][1] for c in cs]),
            "compute_at_end_over_grid": _percentiles([c[-1][0] / grid for c in cs]),
            "compute_to_scalar_tpe_asha_final_hv_over_grid": _percentiles(reach),
            "reached_scalar_tpe_asha_final_hv_within_25pct_grid": sum(x <= 0.25 for x in reach) / len(reach),
            "hv_at_25pct_grid_per_seed": [round(at(c, 0.25 * grid), 4) for c in cs],
        }
    return {
        "reference_point": {"task": 0.0, "forget/delta": REF_FORGETTING},
        "grid_hv": grid_hv,
        "scalar_tpe_asha_final_hv_median": scalar_final,
        "goal": "MOASHA median hypervolume at 25% of grid compute >= scalar TPE+ASHA median at the end of its search",
        "strategies": out,
    }


def constrained(table: Table, seeds: range, grid: int) -> dict[str, Any]:
    ok = [r for rows in table.values() for r in rows if feasible(r[FORGETTING_METRIC], BUDGET)]
    best = max(r[TASK] for r in ok)
    target = best - TOLERANCE * abs(best)
    out = {}
    for name, o in CONSTRAINED.items():
        to = []
        for s in seeds:
            results = run(o, table, s)[0]
            hits = [
                (tid, int(r["samples_seen"]), float(feasible(r[FORGETTING_METRIC], BUDGET) and r[TASK] >= target))
                for tid, r in results
            ]
            to.append(first_compute(curve(hits), 1.0) / grid)
        out[name] = {
            "overrides": ", ".join(o) or "demo values",
            "compute_to_2pct_of_best_feasible_over_grid": _percentiles(to),
            "reached": sum(math.isfinite(x) for x in to) / len(to),
            "reached_within_15pct_grid": sum(x <= 0.15 for x in to) / len(to),
            "per_seed": [round(x, 4) if math.isfinite(x) else None for x in to],
        }
    return {"budget": BUDGET, "best_feasible_task": best, "target": target, "strategies": out}


def warm_start(table: Table, seeds: range, grid: int) -> dict[str, Any]:
    from gridrun.spec import to_optuna
    from gridrun.warm_start import warm_trials

    second = {
        k: [{**r, "objective": penalized(r[TASK], r[FORGETTING_METRIC], WARM_PENALTY)} for r in rows]
        for k, rows in table.items()
    }
    best = max(r["objective"] for rows in second.values() for r in rows)
    target = best - TOLERANCE * abs(best)
    overrides = [f"objective.penalty={WARM_PENALTY}"]
    spec = demo_spec([*BASE, *overrides])
    searched = to_optuna(spec.search.space)[0]
    cold, warm, seeded = [], [], []
    for s in seeds:
        cold.append(first_compute(curve(_events(run(overrides, second, s)[0])), target) / grid)
        results, configs = run([], table, s)  # the first study, on the recorded table
        rows: dict[str, dict[str, Any]] = {}
        for tid, r in results:  # each trial at its best result by objective, as its summary row has it
            if tid not in rows or r["objective"] > rows[tid]["objective"]:
                rows[tid] = r
        summary = {
            "trials": [
                {"status": "TERMINATED", "params": configs[t], "task": r[TASK], "forget_delta": r[FORGETTING_METRIC]}
                for t, r in rows.items()
            ]
        }
        trials = warm_trials(spec, searched, summary)
        seeded.append(len(trials))
        warm.append(first_compute(curve(_events(run(overrides, second, s, trials)[0])), target) / grid)
    return {
        "second_table": f"the recorded table with objective = task - {WARM_PENALTY} * max(0, forget/delta)",
        "same_best_config_in_both_tables": max(second, key=lambda k: max(r["objective"] for r in second[k]))
        == max(table, key=lambda k: max(r["objective"] for r in table[k])),
        "target": target,
        "seeded_trials_median": _percentiles([float(n) for n in seeded])["median"],
        "cold": {"compute_to_2pct_over_grid": _percentiles(cold), "reached": _share(cold), "per_seed": _r(cold)},
        "warm": {"compute_to_2pct_over_grid": _percentiles(warm), "reached": _share(warm), "per_seed": _r(warm)},
    }


def levers(table: Table, seeds: range, grid: int) -> dict[str, Any]:
    """The share of seeds that reach 2% of the table's best within 15% (the goal: >= 90%) and 25% of the grid's
    compute, per lever, on the bench's seeds and on 100 held-out ones."""
    import optuna

    best = max(r["objective"] for rows in table.values() for r in rows)
    target = best - TOLERANCE * abs(best)
    tpe_class = optuna.samplers.TPESampler

    def shares(overrides: list[str], tpe: dict[str, Any], over: range) -> dict[str, float]:
        optuna.samplers.TPESampler = (lambda **kw: tpe_class(**{**kw, **tpe})) if tpe else tpe_class  # type: ignore[misc]
        try:
            xs = [first_compute(curve(_events(run(overrides, table, s)[0])), target) / grid for s in over]
        finally:
            optuna.samplers.TPESampler = tpe_class  # type: ignore[misc]
        return {"within_15pct_grid": sum(x <= 0.15 for x in xs) / len(xs), "within_25pct_grid": _share_le(xs, 0.25)}

    out = {}
    for lever in LEVERS:
        overrides = [o for o in lever if not o.startswith("tpe.")]
        tpe = {o[4:].split("=")[0]: o.split("=")[1] == "True" for o in lever if o.startswith("tpe.")}
        out[", ".join(lever) or "demo values"] = {
            "seeds": shares(overrides, tpe, seeds),
            "held_out": shares(overrides, tpe, HOLDOUT),
        }
    return {
        "goal": "2% of best in >= 90% of seeds at <= 0.15 of grid compute",
        "held_out_seeds": "1000-1099",
        "levers": out,
    }


def _share_le(xs: list[float], limit: float) -> float:
    return sum(x <= limit for x in xs) / len(xs)


def _events(results: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int, float]]:
    return [(tid, int(r["samples_seen"]), float(r["objective"])) for tid, r in results]


def _share(xs: list[float]) -> float:
    return sum(math.isfinite(x) for x in xs) / len(xs)


def _r(xs: list[float]) -> list[float | None]:
    return [round(x, 4) if math.isfinite(x) else None for x in xs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--only", default="pareto,constrained,warm_start,levers")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = load_table()
    grid = sum(int(rows[-1]["samples_seen"]) for rows in table.values())
    seeds = range(args.seeds)
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    objectives = done.get("objectives", {})
    t0 = time.perf_counter()
    for part, fn in {"pareto": pareto, "constrained": constrained, "warm_start": warm_start, "levers": levers}.items():
        if part in args.only.split(","):
            objectives[part] = fn(table, seeds, grid)
            print(f"[bench] {part}: {args.seeds} seeds ({time.perf_counter() - t0:.0f}s)", flush=True)
            print(json.dumps(_finite(_brief(objectives[part])), indent=1), flush=True)
    objectives["seeds"] = args.seeds
    done["objectives"] = _finite(objectives)
    args.out.write_text(json.dumps(done, indent=2) + "\n")
    print(f"wrote {args.out}")


def _brief(x: Any) -> Any:
    """What the console shows: no per-seed lists."""
    if isinstance(x, dict):
        return {k: _brief(v) for k, v in x.items() if "per_seed" not in k}
    return x


if __name__ == "__main__":
    main()
