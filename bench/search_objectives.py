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
* MOASHA's tail: why the seeds that miss the goal miss it (the config that makes the hypervolume never proposed,
  or proposed and stopped), and MOASHA tweaks (rung sizes, reduction) chosen on tuning seeds (100-129), reported on
  the bench's seeds and held-out ones (1000-1049).

The shipped default's own goal (2% of the best in >= 90% of seeds by 15% of the grid) is ``bench/search_levers.py``.

    python bench/search_objectives.py            # ~8 min on a shared 2-core machine
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
#: MOASHA's tail: tweaks of its rungs (and of MO-TPE's startup) tried one at a time, chosen on TAIL_TUNING seeds.
MOASHA = PARETO["MO-TPE + MOASHA (new)"]
TAIL_TWEAKS = [
    ["scheduler.grace_period=384"],
    ["scheduler.grace_period=640"],
    ["scheduler.reduction_factor=3"],
    ["search.n_startup_trials=3"],
]
TAIL_TUNING = range(100, 130)
HELD_OUT = range(1000, 1050)
CONSTRAINED: dict[str, list[str]] = {
    "constrained TPE + ASHA on the task (new)": ["objective.mode=constrained", f"forgetting.budget={BUDGET}"],
    f"penalized TPE + ASHA, budget {BUDGET}": [f"forgetting.budget={BUDGET}"],
    "penalized default (the demo's budget, 0.25)": [],
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


def _front_cells(table: Table, target: float) -> dict[Any, int]:
    """Grid cells with a round whose point alone comes within 1% of the hypervolume ``target`` (a search's final
    front may add a sliver to its best point) → the samples where it first does: a search must propose one of them
    and let it train that far."""
    cells = {}
    for key, rows in table.items():
        pts = [(int(r["samples_seen"]), hypervolume([(r[TASK], r[FORGETTING_METRIC])])) for r in rows]
        seen = [n for n, hv in pts if hv >= 0.99 * target]
        if seen:
            cells[key] = min(seen)
    return cells


def moasha_tail(table: Table, seeds: range, grid: int) -> dict[str, Any]:
    """Why MOASHA's missing seeds miss (reaching, by 25% of the grid, the hypervolume scalar TPE + ASHA ends its
    search with; by 25% of the grid: no trial on a grid cell that gets there, such trials all stopped short of the
    round that gets there, or still training toward it), and whether a tweak of its rungs fixes the tail without
    hurting the median."""
    from bench.replay.trainable import nearest

    target = _percentiles([hv_curve(run([], table, s)[0])[-1][1] for s in seeds])["median"]
    cells = _front_cells(table, target)
    why = {"reached": 0, "never proposed": 0, "proposed, stopped before its round": 0, "proposed, still short": 0}
    for s in seeds:
        results, configs = run(MOASHA, table, s)
        if at(hv_curve(results), 0.25 * grid) >= target:
            why["reached"] += 1
            continue
        by25: dict[str, dict[str, Any]] = {}  # each trial's last result within 25% of the grid's compute
        for (compute, _), (tid, r) in zip(curve(_events(results)), results, strict=True):
            if compute <= 0.25 * grid:
                by25[tid] = r
        ended = {t for t, r in _last(results).items() if t in by25 and r is by25[t] and r.get("progress", 1) < 1}
        c = {t: nearest(table, *(configs[t][k] for k in ("train.lr", "lora.r", "data.sample_ratio"))) for t in by25}
        proposed = [t for t in by25 if c[t] in cells]
        if not proposed:
            why["never proposed"] += 1
        elif all(t in ended for t in proposed):
            why["proposed, stopped before its round"] += 1
        else:
            why["proposed, still short"] += 1

    def share(overrides: list[str], over: range) -> dict[str, Any]:
        hv = [at(hv_curve(run([*MOASHA, *overrides], table, s)[0]), 0.25 * grid) for s in over]
        return {"reached_within_25pct_grid": _share_at(hv, target), "hv_at_25pct_grid": _percentiles(hv)}

    tuning = {", ".join(o) or "MOASHA as shipped": share(o, TAIL_TUNING) for o in [[], *TAIL_TWEAKS]}
    pick = max(tuning, key=lambda k: (tuning[k]["reached_within_25pct_grid"], tuning[k]["hv_at_25pct_grid"]["median"]))
    chosen = {"MOASHA as shipped": [], pick: [] if pick == "MOASHA as shipped" else pick.split(", ")}
    return {
        "target_hv": target,
        "cells_reaching_it": {str(k): v for k, v in cells.items()},
        "why_seeds_miss": why,
        "tuning_seeds": f"{TAIL_TUNING.start}-{TAIL_TUNING.stop - 1}",
        "tweaks_on_tuning_seeds": tuning,
        "pick": pick,
        "pick_on_bench_seeds": {k: share(o, seeds) for k, o in chosen.items()},
        "pick_on_held_out_seeds": {k: share(o, HELD_OUT) for k, o in chosen.items()},
    }


def _last(results: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each trial's last result."""
    last: dict[str, dict[str, Any]] = {}
    for tid, r in results:
        last[tid] = r
    return last


def _share_at(xs: list[float], target: float) -> float:
    return sum(x >= target for x in xs) / len(xs)


def _events(results: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int, float]]:
    return [(tid, int(r["samples_seen"]), float(r["objective"])) for tid, r in results]


def _share(xs: list[float]) -> float:
    return sum(math.isfinite(x) for x in xs) / len(xs)


def _r(xs: list[float]) -> list[float | None]:
    return [round(x, 4) if math.isfinite(x) else None for x in xs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--only", default="pareto,constrained,warm_start,moasha_tail")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = load_table()
    grid = sum(int(rows[-1]["samples_seen"]) for rows in table.values())
    seeds = range(args.seeds)
    objectives: dict[str, Any] = {}
    t0 = time.perf_counter()
    parts = {"pareto": pareto, "constrained": constrained, "warm_start": warm_start, "moasha_tail": moasha_tail}
    for part, fn in parts.items():
        if part in args.only.split(","):
            objectives[part] = fn(table, seeds, grid)
            print(f"[bench] {part}: {args.seeds} seeds ({time.perf_counter() - t0:.0f}s)", flush=True)
            print(json.dumps(_finite(_brief(objectives[part])), indent=1), flush=True)
    # read now, not at the start: other parts (or bench/search_levers.py) may have written meanwhile
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    merged = {k: v for k, v in done.get("objectives", {}).items() if k != "levers"}  # levers: now default_goal
    done["objectives"] = _finite({**merged, **objectives, "seeds": args.seeds})
    args.out.write_text(json.dumps(done, indent=2) + "\n")
    print(f"wrote {args.out}")


def _brief(x: Any) -> Any:
    """What the console shows: no per-seed lists."""
    if isinstance(x, dict):
        return {k: _brief(v) for k, v in x.items() if "per_seed" not in k}
    return x


if __name__ == "__main__":
    main()
