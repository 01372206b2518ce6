"""The shipped default's goal on the replay table: within 2% of the best in >= 90% of seeds by 0.15 of the grid.

Issue 22's goal for the demo's search (``search_spaces/forgetting.yaml``: TPE + ASHA + forgetting budget, 16 trials,
2 at a time). Each lever is an override of the demo's values, replayed through ``bench/replay/simulate.py`` (gridrun's
own searcher, ASHA and stoppers in Tune's call order) on ``bench/replay/table.csv``:

1. **Screen** every lever in ``LEVERS`` on the tuning seeds (0-99), then the pairs of the levers that beat the demo's
   values there; the pick is the best by the share of seeds within 2% by 0.15 of the grid, then the median compute.
   ``--screen-table`` screens on another recording of the grid (e.g. ``table_ungrouped.csv``), so the pick is
   confirmed on curves it never saw as well as on seeds it never saw.
2. **Confirm** the pick against the demo's values on held-out seeds (2000-2199) that no choice here looked at, with
   95% Wilson intervals. Only a pick whose held-out interval clears the demo's point estimate is worth shipping.
3. **Why not**: the measurement's own limits. The tolerance against the eval's resolution (format success moves
   in steps of 1/eval_size); the grid cells within 2% and the share of the sampler's prior that snaps onto them;
   how many trials fit in 0.15 of the grid and what random search's hit rate is with that many; and, where
   ``bench/replay/reruns/seed*.csv`` exist (``record.py --set train.seed=K --only ...``), how often a re-run of a
   top config with another training seed lands within 2% of the table's best; and each config's best objective
   against the same grid recorded with shuffled batches (``table_ungrouped.csv``: the same configs, another batch
   order), which says how far a re-run moves a config's best.

``tpe.<kwarg>=<value>`` levers change an argument gridrun fixes in ``TPESampler`` (multivariate, group,
constant_liar, ...), and ``sampler=gp|cmaes|oracle`` levers build another sampler in its place, forced for the
bench only (``bench/forced_samplers.py``).

    python bench/search_levers.py                 # ~30 min on a shared 2-core machine
    python bench/search_levers.py --tune-seeds 20 --held-out 40   # a quick look
    python bench/search_levers.py --stage screen --screen-table bench/replay/table_ungrouped.csv
    python bench/search_levers.py --stage confirm    # the saved screen's pick, on table.csv

Merges ``default_goal`` into ``bench/results/search_efficiency.json`` (``--key`` another name: e.g. the same stages on
``table_eval128.csv``, the grid recorded with 128 eval prompts, under ``default_goal_eval128``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.forced_samplers import forcing, sampler_kwargs, timed_suggests  # noqa: E402
from bench.replay.record import demo_spec  # noqa: E402
from bench.replay.simulate import simulate  # noqa: E402
from bench.replay.trainable import Table, load_table, nearest  # noqa: E402
from bench.search_efficiency import BASE, RESULTS, TOLERANCE, _finite, _percentiles, curve, first_compute  # noqa: E402

#: The goal: the share of seeds within 2% of the best by this share of the grid's compute.
LIMIT = 0.15
GOAL = 0.9
TUNE_SEEDS = range(0, 100)
HELD_OUT = range(2000, 2200)
#: The confirm stage also reports this tolerance: it lets in the runner-up config, 0.003 below the 2% line (a tenth
#: of one format_success step, 1/32).
LOOSE = 0.03
#: Confirmed on the held-out seeds besides the screens' picks: GP as ``search.sampler: gp`` would build it. The
#: screen's GP with ``deterministic_objective`` may win on the replay, whose curves are deterministic; a real
#: training run is not (a re-run moves a config's best by 0.036, median), so it is confirmed but not shippable.
SHIPPABLE = [["sampler=gp"], ["sampler=gp", "search.n_startup_trials=3"]]
#: The bound: startup trials → a lever that makes every later trial the table's best cell.
ORACLE = {n: ["sampler=oracle", f"search.n_startup_trials={n}"] for n in (0, 2, 3, 4, 6)}
#: The screens' keys in ``default_goal``: TPE/ASHA/budget levers (with the samplers, ``--levers all``), samplers only.
SCREENS = ("screen", "sampler_screen")
RERUNS = ROOT / "bench" / "replay" / "reruns"
#: The same grid recorded before group_by_length was the default: every config again, only the batch order differs.
PREVIOUS = ROOT / "bench" / "replay" / "table_ungrouped.csv"
#: One lever per entry, overrides of the demo's values.
LEVERS: list[list[str]] = [
    *[[f"search.n_startup_trials={n}"] for n in (2, 3, 4, 8)],
    ["tpe.multivariate=False"],
    ["tpe.group=True"],
    ["tpe.constant_liar=False"],
    ["tpe.n_ei_candidates=64"],
    *[[f"scheduler.grace_period={g}"] for g in (384, 448, 640)],
    *[[f"scheduler.reduction_factor={r}"] for r in (3, 4)],
    ["scheduler.brackets=2"],
    *[[f"forgetting.patience={p}"] for p in (1, 3)],
    *[[f"forgetting.budget={b}"] for b in (0.15, 0.5)],
]
#: Other samplers Optuna ships, and TPE's arguments that Optuna 4.9 deprecated (removed in 6: screened to know what
#: they are worth, but no default should come to rest on them). ``sampler=<name>`` builds that sampler in place of
#: TPE with the spec's seed and ``search.n_startup_trials``; ``<name>.<kwarg>=<value>`` passes it one argument
#: (``<name>.startup=qmc``: its startup trials from a scrambled Sobol sequence).
SAMPLER_LEVERS: list[list[str]] = [
    ["sampler=gp"],
    *[["sampler=gp", f"search.n_startup_trials={n}"] for n in (3, 4, 8)],
    ["sampler=gp", "gp.deterministic_objective=True"],
    ["sampler=gp", "gp.startup=qmc"],
    ["sampler=cmaes", "cmaes.with_margin=True"],
    ["tpe.startup=qmc"],
    ["tpe.consider_endpoints=True"],
    *[[f"tpe.prior_weight={w}"] for w in (0.5, 2.0)],
    *[[f"tpe.gamma={g}"] for g in (0.15, 0.25)],
]


def to_target(lever: list[str], table: Table, seeds: range, targets: tuple[float, ...], grid: int) -> list[list[float]]:
    """Compute (a share of the grid's) until each target (within 2% of the best, ...) is reached, per target and
    seed (inf: never)."""
    out: list[list[float]] = [[] for _ in targets]
    with forcing(lever, table) as overrides:
        for s in seeds:
            c = curve(simulate(demo_spec([*BASE, *overrides, f"search.seed={s}"]), table))
            for xs, target in zip(out, targets, strict=True):
                xs.append(first_compute(c, target) / grid)
    return out


def suggest_cost(lever: list[str], table: Table, seeds: range) -> dict[str, Any]:
    """Seconds per ``searcher.suggest`` in a 16-trial search (the driver waits on it before a trial starts; a
    GP refits on every suggest): per trial index, the median over ``seeds``, and the slowest."""
    per_trial: dict[int, list[float]] = {}
    with forcing(lever, table) as overrides, timed_suggests() as times:
        for s in seeds:
            times.clear()
            simulate(demo_spec([*BASE, *overrides, f"search.seed={s}"]), table)
            for i, t in enumerate(times):
                per_trial.setdefault(i, []).append(t)
    every = [t for ts in per_trial.values() for t in ts]
    return {
        "seeds": len(seeds),
        "median_s_by_trial": [round(statistics.median(per_trial[i]), 4) for i in sorted(per_trial)],
        "median_s": round(statistics.median(every), 4),
        "max_s": round(max(every), 4),
        "total_s_per_search": round(sum(every) / len(seeds), 3),
    }


_TABLE: Table = {}


def _init(path: Path) -> None:
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)  # the deprecated TPE arguments screened on purpose
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # GPSampler's deterministic_objective
    torch.set_num_threads(1)  # GPSampler's fits: one thread per worker, as Optuna advises for parallel processes
    _TABLE.update(load_table(path))


def _job(lever: list[str], seeds: range, targets: tuple[float, ...], grid: int) -> list[list[float]]:
    return to_target(lever, _TABLE, seeds, targets, grid)


class Runner:
    """Levers × seeds on a process pool (one search is a second of CPU; a screen is a thousand of them)."""

    def __init__(self, path: Path, workers: int, targets: tuple[float, ...], grid: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.targets, self.grid = targets, grid
        self.pool = ProcessPoolExecutor(workers, initializer=_init, initargs=(path,))

    def many(self, levers: dict[str, list[str]], seeds: range) -> dict[str, list[list[float]]]:
        """label → compute to each target per seed, the seeds split in chunks across the pool."""
        chunks = [range(a, min(a + 10, seeds.stop)) for a in range(seeds.start, seeds.stop, 10)]
        futures = {
            k: [self.pool.submit(_job, v, c, self.targets, self.grid) for c in chunks] for k, v in levers.items()
        }
        return {
            k: [[x for f in fs for x in f.result()[i]] for i in range(len(self.targets))] for k, fs in futures.items()
        }


def wilson(k: int, n: int) -> list[float]:
    """95% Wilson interval of a share (scipy's, installed with MLflow)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(ci.low, 3), round(ci.high, 3)]


def stats(xs: list[float]) -> dict[str, Any]:
    k = sum(x <= LIMIT for x in xs)
    return {
        "within_15pct_grid": k / len(xs),
        "within_15pct_grid_ci95": wilson(k, len(xs)),
        "within_25pct_grid": sum(x <= 0.25 for x in xs) / len(xs),
        "reached": sum(math.isfinite(x) for x in xs) / len(xs),
        "compute_to_2pct_over_grid": _percentiles(xs),
    }


def _key(s: dict[str, Any]) -> tuple[float, float]:
    median = s["compute_to_2pct_over_grid"]["median"]
    return (-s["within_15pct_grid"], median if math.isfinite(median) else math.inf)


def _pairable(a: list[str], b: list[str]) -> bool:
    """Two levers make a pair unless they set one knob twice or pass TPE's arguments to another sampler."""
    knobs = [o.split("=")[0] for o in (*a, *b)]
    name, _ = sampler_kwargs([*a, *b])
    return len(set(knobs)) == len(knobs) and not (name != "tpe" and any(k.startswith("tpe.") for k in knobs))


def screen(runner: Runner, seeds: range, lever_list: list[list[str]]) -> dict[str, Any]:
    """One lever at a time, then the pairs of the levers that beat the demo's values, on the tuning seeds."""
    levers = {"demo values": [], **{", ".join(lv): lv for lv in lever_list}}
    results = {k: stats(v[0]) for k, v in runner.many(levers, seeds).items()}
    demo = _key(results["demo values"])
    better = sorted((k for k in levers if _key(results[k]) < demo), key=lambda k: _key(results[k]))
    pairs = {
        f"{a}, {b}": [*levers[a], *levers[b]]
        for i, a in enumerate(better[:4])
        for b in better[i + 1 : 4]
        if _pairable(levers[a], levers[b])
    }
    results |= {k: stats(v[0]) for k, v in runner.many(pairs, seeds).items()}
    levers |= pairs
    for k, v in results.items():
        print(f"[levers] {k}: {v['within_15pct_grid']:.2f} within 0.15 of the grid")
    pick = min(results, key=lambda k: _key(results[k]))
    return {"results": results, "pick": pick, "pick_overrides": levers[pick]}


def noise_floor(table: Table, spec: Any, target: float, grid: int, default_runs: list[float]) -> dict[str, Any]:
    """What limits any search on this table: resolution, the target's share of the prior, trials per 0.15."""
    best = max(r["objective"] for rows in table.values() for r in rows)
    hits = sorted(k for k, rows in table.items() if max(r["objective"] for r in rows) >= target)
    # the sampler's prior (Optuna's distributions: lr log-uniform, ratio uniform, the recorded ranks), snapped
    rng = random.Random(0)
    lr, ratio = spec.search.space["train.lr"], spec.search.space["data.sample_ratio"]
    ranks = spec.search.space["lora.r"].choices
    n, inside = 20000, 0
    for _ in range(n):
        x = math.exp(rng.uniform(math.log(lr.low), math.log(lr.high)))
        inside += nearest(table, x, rng.choice(ranks), rng.uniform(ratio.low, ratio.high)) in hits
    p = inside / n
    trials = _trials_by(spec, table, LIMIT * grid)
    k = statistics.median(trials)
    out: dict[str, Any] = {
        "tolerance": round(TOLERANCE * abs(best), 4),
        "format_success_step": 1 / _eval_prompts(table),
        "configs_within_2pct": [str(c) for c in hits],
        "prior_share_within_2pct": round(p, 4),
        "trials_started_by_15pct_grid": _percentiles([float(t) for t in trials]),
        "random_hit_rate_with_that_many_trials": round(1 - (1 - p) ** k, 3),
        "demo_values_within_15pct": sum(x <= LIMIT for x in default_runs) / len(default_runs),
    }
    out["reruns"] = _reruns(table, target)
    out["same_grid_other_batch_order"] = _paired(table, target)
    out["demo_values_by_tolerance"] = _tolerances(table)
    return out


def _eval_prompts(table: Table) -> int:
    """The eval prompts a recording scored each round (``data/eval_samples``)."""
    return int(float(next(iter(table.values()))[0]["data/eval_samples"]))


def _tolerances(table: Table) -> dict[str, Any]:
    """The demo's search on this table and the previous recording, at tolerances around 2%: which configs count
    as found, and what the search needs to find one (100 seeds, 1000-1099)."""
    out: dict[str, Any] = {}
    for name, t in (("this table", table), ("previous recording", load_table(PREVIOUS) if PREVIOUS.is_file() else {})):
        if not t:
            continue
        best = max(r["objective"] for rows in t.values() for r in rows)
        grid = sum(int(rows[-1]["samples_seen"]) for rows in t.values())
        curves = [curve(simulate(demo_spec([*BASE, f"search.seed={s}"]), t)) for s in range(1000, 1100)]
        for tol in (0.02, 0.03, 0.05):
            line = best - tol * abs(best)
            xs = [first_compute(c, line) / grid for c in curves]
            out[f"{name}, within {tol:.0%}"] = {
                "configs": sorted(str(k) for k, rows in t.items() if max(r["objective"] for r in rows) >= line),
                "within_15pct_grid": sum(x <= LIMIT for x in xs) / len(xs),
                "within_25pct_grid": sum(x <= 0.25 for x in xs) / len(xs),
                "compute_over_grid": _percentiles(xs),
            }
    return out


def _paired(table: Table, target: float) -> dict[str, Any]:
    """Each config's best objective here against the previous recording of the same grid (shuffled batches)."""
    if not PREVIOUS.is_file():
        return {"note": f"{PREVIOUS.name} missing"}
    prev = load_table(PREVIOUS)
    if _eval_prompts(prev) != _eval_prompts(table):  # another eval set: the difference would not be a re-run's
        return {"note": f"{PREVIOUS.name} scored {_eval_prompts(prev)} eval prompts, this table {_eval_prompts(table)}"}
    pairs = {k: (max(r["objective"] for r in rows), max(r["objective"] for r in prev[k])) for k, rows in table.items()}
    learned = {k: v for k, v in pairs.items() if max(v) > 0.5}  # configs that learn the format in either recording
    diffs = [abs(a - b) for a, b in learned.values()]
    prev_best = max(b for _, b in pairs.values())
    return {
        "configs_that_learn": len(learned),
        "abs_diff_of_best_objective": _percentiles(diffs),
        "max_abs_diff": round(max(diffs), 4) if diffs else None,
        "previous_best": round(prev_best, 4),
        "previous_within_2pct": sorted(str(k) for k, (_, b) in pairs.items() if b >= prev_best - TOLERANCE * prev_best),
        "this_best_config_in_previous": round(pairs[max(pairs, key=lambda k: pairs[k][0])][1], 4),
        "previous_best_config_here": round(pairs[max(pairs, key=lambda k: pairs[k][1])][0], 4),
        "target_here": round(target, 4),
        "per_config": {str(k): [round(a, 4), round(b, 4)] for k, (a, b) in sorted(learned.items())},
    }


def _trials_by(spec: Any, table: Table, budget: float) -> list[int]:
    """Trials the demo's search has started once its compute passes ``budget`` (20 tuning seeds)."""
    counts = []
    for s in range(20):
        events = simulate(demo_spec([*BASE, f"search.seed={s}"]), table)
        started = {tid for (tid, _, _), (x, _) in zip(events, curve(events), strict=True) if x <= budget}
        counts.append(len(started))
    return counts


def _reruns(table: Table, target: float) -> dict[str, Any]:
    """Re-runs of top configs with other training seeds: their best objective, and whether it is within 2%."""
    files = [f for f in sorted(RERUNS.glob("seed*.csv")) if _eval_prompts(load_table(f)) == _eval_prompts(table)]
    if not files:
        return {
            "note": f"none recorded with {_eval_prompts(table)} eval prompts (bench/replay/record.py --set "
            "train.seed=K --only ... --out reruns/seedK.csv)"
        }
    runs: dict[str, dict[str, float]] = {}
    for f in files:
        with f.open() as fh:
            for row in csv.DictReader(fh):
                key = str((float(row["train.lr"]), int(row["lora.r"]), float(row["data.sample_ratio"])))
                seed = f.stem.removeprefix("seed")
                runs.setdefault(key, {})[seed] = max(runs.get(key, {}).get(seed, -math.inf), float(row["objective"]))
    for key in runs:  # the recorded table is training seed 0
        k = tuple(json.loads(key.replace("(", "[").replace(")", "]")))
        runs[key]["0"] = max(r["objective"] for r in table[k])  # type: ignore[index]
    within = [v >= target for seeds in runs.values() for v in seeds.values()]
    return {
        "best_objective_by_config_and_training_seed": {
            k: {s: round(v, 4) for s, v in v_.items()} for k, v_ in runs.items()
        },
        "share_within_2pct_of_table_best": round(sum(within) / len(within), 3),
        "runs": len(within),
    }


def _target_grid(table: Table, tolerance: float = TOLERANCE) -> tuple[float, int]:
    best = max(r["objective"] for rows in table.values() for r in rows)
    return best - tolerance * abs(best), sum(int(rows[-1]["samples_seen"]) for rows in table.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune-seeds", type=int, default=len(TUNE_SEEDS))
    ap.add_argument("--held-out", type=int, default=len(HELD_OUT))
    ap.add_argument("--table", type=Path, default=ROOT / "bench" / "replay" / "table.csv", help="confirmed on")
    ap.add_argument("--screen-table", type=Path, default=None, help="screened on (default: --table)")
    ap.add_argument(
        "--stage",
        choices=["all", "screen", "confirm", "bound"],
        default="all",
        help="confirm: the saved screens' picks; bound: a sampler that knows the best cell after its startup trials",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    ap.add_argument("--key", default="default_goal", help="the key of --out the stages merge into")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--levers", choices=["all", "samplers"], default="all", help="samplers: SAMPLER_LEVERS only")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    # merged into what earlier stages wrote: the sampler screen and the TPE/ASHA one are kept side by side
    out = done.get(args.key, {})
    screen_key = "screen" if args.levers == "all" else "sampler_screen"
    out["goal"] = f"within {TOLERANCE:.0%} of the table's best in >= {GOAL:.0%} of seeds by {LIMIT} of grid compute"
    if args.stage in ("all", "screen"):
        screen_table = args.screen_table or args.table
        tune_seeds = range(TUNE_SEEDS.start, TUNE_SEEDS.start + args.tune_seeds)
        target, grid = _target_grid(load_table(screen_table))
        runner = Runner(screen_table, args.workers, (target,), grid)
        out[screen_key] = {
            "table": str(screen_table),
            "tuning_seeds": f"{tune_seeds.start}-{tune_seeds.stop - 1}",
            "levers": args.levers,
            **screen(runner, tune_seeds, {"all": LEVERS + SAMPLER_LEVERS, "samplers": SAMPLER_LEVERS}[args.levers]),
        }
        runner.pool.shutdown()
    if args.stage in ("all", "confirm"):
        table = load_table(args.table)
        target, grid = _target_grid(table)
        loose, _ = _target_grid(table, LOOSE)
        held_out = range(HELD_OUT.start, HELD_OUT.start + args.held_out)
        # the picks of both screens, and GP as gridrun could ship it (no experimental argument forced)
        candidates = {"demo values": [], **{out[k]["pick"]: out[k]["pick_overrides"] for k in SCREENS if k in out}}
        candidates |= {", ".join(lv): lv for lv in SHIPPABLE}
        runner = Runner(args.table, args.workers, (target, loose), grid)
        held = runner.many(candidates, held_out)
        runner.pool.shutdown()
        out["held_out"] = {
            "table": str(args.table),
            "seeds": f"{held_out.start}-{held_out.stop - 1}",
            **{k: {**stats(v[0]), f"within_{LOOSE:.0%}_of_best": stats(v[1])} for k, v in held.items()},
        }
        out["noise_floor"] = noise_floor(table, demo_spec(BASE), target, grid, held["demo values"][0])
        # in this process, torch's own threads: what a driver pays before each trial starts
        out["suggest_cost"] = {
            "machine": f"{os.cpu_count()} cores shared, load {os.getloadavg()[0]:.1f} at the start",
            **{
                k: suggest_cost(v, table, range(5)) for k, v in candidates.items() if k in ("demo values", "sampler=gp")
            },
        }
    if args.stage == "bound":
        table = load_table(args.table)
        target, grid = _target_grid(table)
        held_out = range(HELD_OUT.start, HELD_OUT.start + args.held_out)
        runner = Runner(args.table, args.workers, (target,), grid)
        bound = runner.many({f"{n} random trials, then the best cell": lv for n, lv in ORACLE.items()}, held_out)
        runner.pool.shutdown()
        out["bound"] = {
            "what": "a sampler that knew the answer: random startup trials, then the table's best cell every time",
            "seeds": f"{held_out.start}-{held_out.stop - 1}",
            **{k: stats(v[0]) for k, v in bound.items()},
        }
    out[f"wall_s_{screen_key if args.stage == 'screen' else args.stage}"] = round(time.perf_counter() - t0, 1)
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}  # read again: others may have written
    done[args.key] = _finite(out)
    args.out.write_text(json.dumps(done, indent=2) + "\n")
    print(json.dumps(_finite({k: v for k, v in out.items() if k != "screen"}), indent=1))
    print(f"picks on the tuning seeds: {[out[k]['pick'] for k in SCREENS if k in out]}; wrote {args.out}")


if __name__ == "__main__":
    main()
