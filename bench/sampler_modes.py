"""Does the sampler's best choice differ by objective mode? TPE against GP in pareto and constrained mode.

``bench/search_levers.py`` measures ``search.sampler: gp`` in the demo's penalized mode. Here the same two samplers
run the other modes on the replay table with ``bench/search_objectives.py``'s measures and seeds (its ``run``,
hypervolume and constrained target), side by side, same seeds:

* pareto (MOASHA): the hypervolume at 25% of the grid's compute, and the share of seeds that reach, by then, the
  hypervolume the scalar default ends its search with (issue 22's goal for multi-objective stopping);
* constrained (budget ``BUDGET``): compute until a feasible result within 2% of the best feasible task metric,
  and the share of seeds that get there by 15% of the grid.

Each search also times its ``suggest`` calls: Optuna's GP fits one Gaussian process per objective and constraint
and optimizes a q-batch acquisition over the running trials, which costs more in these modes.

    python bench/sampler_modes.py                                             # ~10 min on 2 shared cores
    python bench/sampler_modes.py --seed-start 1000 --modes pareto            # held-out seeds
    python bench/sampler_modes.py --seeds 4                                   # a quick look

Merges ``sampler_by_mode["seeds A-B"]`` into ``bench/results/search_efficiency.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay.trainable import Table, load_table  # noqa: E402
from bench.search_efficiency import RESULTS, TOLERANCE, _finite, _percentiles, curve, first_compute  # noqa: E402
from bench.search_objectives import (  # noqa: E402
    BUDGET,
    FORGETTING_METRIC,
    MOASHA,
    TASK,
    at,
    hv_curve,
    run,
)

#: mode → strategy → overrides of the demo spec (the bench's BASE is added by ``run``).
STRATEGIES: dict[str, dict[str, list[str]]] = {
    "pareto": {
        "scalar TPE + ASHA (default; the hypervolume to reach)": [],
        "MO-TPE + MOASHA": MOASHA,
        "MO-GP + MOASHA": [*MOASHA, "search.sampler=gp"],
        # MO-TPE's fewer startup trials helped MOASHA's tail (search_objectives.py): the same for both samplers
        "MO-TPE + MOASHA, 3 startup trials": [*MOASHA, "search.n_startup_trials=3"],
        "MO-GP + MOASHA, 3 startup trials": [*MOASHA, "search.sampler=gp", "search.n_startup_trials=3"],
    },
    "constrained": {
        "constrained TPE + ASHA": ["objective.mode=constrained", f"forgetting.budget={BUDGET}"],
        "constrained GP + ASHA": ["objective.mode=constrained", f"forgetting.budget={BUDGET}", "search.sampler=gp"],
    },
}


def _job(mode: str, name: str, seeds: list[int], path: str) -> list[dict[str, Any]]:
    """Each seed's search: its results (what the measures read) and its suggest times."""
    import warnings

    import optuna
    import torch

    from bench.forced_samplers import timed_suggests

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # one thread per worker process, as Optuna advises for GPSampler run in parallel
    table = load_table(path)
    out = []
    with timed_suggests() as times:
        for s in seeds:
            times.clear()
            results, _ = run(STRATEGIES[mode][name], table, s)
            out.append({"results": results, "suggest_s": list(times)})
    return out


def _pareto(runs: dict[str, list[dict[str, Any]]], grid: int) -> dict[str, Any]:
    curves = {k: [hv_curve(r["results"]) for r in v] for k, v in runs.items()}
    reference = next(iter(curves))
    goal = _percentiles([c[-1][1] for c in curves[reference]])["median"]
    out: dict[str, Any] = {"scalar_default_final_hv_median": goal}
    for name, cs in curves.items():
        reach = [first_compute(c, goal) / grid for c in cs]
        out[name] = {
            "hv_at_25pct_grid": _percentiles([at(c, 0.25 * grid) for c in cs]),
            "reached_scalar_final_hv_within_25pct_grid": sum(x <= 0.25 for x in reach) / len(reach),
            "compute_to_scalar_final_hv_over_grid": _percentiles(reach),
        }
    return out


def _constrained(runs: dict[str, list[dict[str, Any]]], table: Table, grid: int) -> dict[str, Any]:
    from gridrun.metrics import feasible

    best = max(r[TASK] for rows in table.values() for r in rows if feasible(r[FORGETTING_METRIC], BUDGET))
    target = best - TOLERANCE * abs(best)
    out: dict[str, Any] = {"budget": BUDGET, "target_task": target}
    for name, rs in runs.items():
        to = []
        for r in rs:
            hits = [
                (tid, int(x["samples_seen"]), float(feasible(x[FORGETTING_METRIC], BUDGET) and x[TASK] >= target))
                for tid, x in r["results"]
            ]
            to.append(first_compute(curve(hits), 1.0) / grid)
        out[name] = {
            "compute_to_2pct_of_best_feasible_over_grid": _percentiles(to),
            "reached": sum(math.isfinite(x) for x in to) / len(to),
            "reached_within_15pct_grid": sum(x <= 0.15 for x in to) / len(to),
        }
    return out


def main() -> None:
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=60, help="how many seeds, from --seed-start")
    ap.add_argument("--seed-start", type=int, default=0, help="0: the bench's seeds; 1000: held-out ones")
    ap.add_argument("--modes", default="pareto,constrained")
    ap.add_argument("--table", type=Path, default=ROOT / "bench" / "replay" / "table.csv")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = load_table(args.table)
    grid = sum(int(rows[-1]["samples_seen"]) for rows in table.values())
    end = args.seed_start + args.seeds
    chunks = [list(range(a, min(a + 2, end))) for a in range(args.seed_start, end, 2)]
    modes = args.modes.split(",")
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {
            (mode, name): [pool.submit(_job, mode, name, c, str(args.table)) for c in chunks]
            for mode, named in STRATEGIES.items()
            if mode in modes
            for name in named
        }
        runs = {key: [x for f in fs for x in f.result()] for key, fs in futures.items()}
    by_mode: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (mode, name), rs in runs.items():
        by_mode.setdefault(mode, {})[name] = rs
    out: dict[str, Any] = {
        **({"pareto": _pareto(by_mode["pareto"], grid)} if "pareto" in by_mode else {}),
        **({"constrained": _constrained(by_mode["constrained"], table, grid)} if "constrained" in by_mode else {}),
        "suggest_s": {
            f"{mode}: {name}": {
                "median": round(_percentiles([t for r in rs for t in r["suggest_s"]])["median"], 4),
                "max": round(max(t for r in rs for t in r["suggest_s"]), 3),
            }
            for (mode, name), rs in runs.items()
        },
        "suggest_s_measured_on": "2 shared cores, one torch thread per worker, other engineers' jobs running",
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}  # read at the end: others may have written
    done.setdefault("sampler_by_mode", {})[f"seeds {args.seed_start}-{end - 1}"] = _finite(out)
    args.out.write_text(json.dumps(done, indent=2) + "\n")
    print(json.dumps(_finite(out), indent=1))


if __name__ == "__main__":
    main()
