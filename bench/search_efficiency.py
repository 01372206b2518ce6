"""Does the search pay? gridrun's default against simpler strategies, replayed on recorded learning curves.

Every trial replays a recorded curve of the demo study (``bench/replay/table.csv``, written by
``bench/replay/record.py``) instead of training, so a 16-trial search takes seconds and each strategy runs over 20
seeds. The strategy table runs the real ``tune.Tuner`` on a local Ray (``gridrun.launch.start_ray``) with gridrun's
own searcher (``gridrun.searcher.build_searcher``: Optuna TPE or random) and ASHA and stoppers
(``gridrun.stopping.build_stopping``); MLflow tracking and the checkpoint keeper are left out (they record, they
do not decide). The defaults sweep (a coordinate search over grace period, reduction factor, startup trials,
forgetting budget and patience) and a held-out check on 100 further seeds run the same pieces through
``bench/replay/simulate.py``, a Ray-free loop in Tune's call order; the strategy table is run both ways, so the
JSON shows the two agree.

Compute is samples seen summed over trials (each trial's latest ``samples_seen``), counted as results arrive.
The target is within 2% of the table's best objective, ``best - 0.02 * |best|`` (objectives here are at most 1,
the best is about 0.95: the target is about 0.93). The full grid runs every recorded config to its end; its
compute is the denominator of every ratio. "Equal compute" is the median total compute of the default strategy.

    python bench/search_efficiency.py --candidate scheduler.grace_period=512 --candidate forgetting.budget=0.25
    python bench/search_efficiency.py --backend sim --seeds 3 --no-sweep --holdout 0   # a quick look

Writes ``bench/results/search_efficiency.json`` (with the plotted curves) and ``search_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay.record import RANKS, demo_spec  # noqa: E402
from bench.replay.simulate import simulate  # noqa: E402
from bench.replay.trainable import Table, load_table, replay_trainable  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: Within this fraction of the table's best objective counts as found.
TOLERANCE = 0.02
#: The replay searches the demo's space with the recorded ranks only (a rank between two would be a tie).
BASE = [f"search.space.lora.r.choices={RANKS}", "search.max_concurrent=2"]
#: Strategy → overrides of the demo spec (whose own values are gridrun's default: TPE + ASHA + forgetting budget).
STRATEGIES: dict[str, list[str]] = {
    "default (TPE + ASHA + budget)": [],
    "random": ["search.sampler=random", "scheduler.type=none", "forgetting.budget=null"],
    "random + ASHA": ["search.sampler=random", "forgetting.budget=null"],
    "TPE, no ASHA (budget kept)": ["scheduler.type=none"],
}
DEFAULT = "default (TPE + ASHA + budget)"
GRID = "full grid (random order)"
CANDIDATE = "candidate"
#: Held-out seeds start here (the strategies and the sweep use 0 .. seeds-1).
HOLDOUT_SEED = 1000
#: The defaults sweep (simulated): one knob at a time from the demo's values, then the pairs that interact; then
#: one knob at a time again around the best setting found (a knob's effect can hide behind another's).
SWEEP: dict[str, list[Any]] = {
    "scheduler.grace_period": [64, 128, 256, 384, 512, 640],
    "scheduler.reduction_factor": [2, 3, 4],
    "search.n_startup_trials": [3, 6, 10],
    "forgetting.budget": [0.25, 0.5, 1.0, None],
    "forgetting.patience": [1, 2, 3],
}
PAIRS = [("scheduler.grace_period", "scheduler.reduction_factor"), ("forgetting.budget", "forgetting.patience")]


def _settings(center: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One knob at a time around ``center`` (and, around the demo's values, the pairs)."""
    center = center or {}
    points = [{**center, k: v} for k, values in SWEEP.items() for v in values]
    if not center:
        points += [{a: x, b: y} for a, b in PAIRS for x in SWEEP[a] for y in SWEEP[b]]
    return [dict(t) for t in dict.fromkeys(tuple(sorted(p.items())) for p in points)]


def _overrides(setting: dict[str, Any]) -> list[str]:
    return [f"{k}={_yaml(v)}" for k, v in setting.items()]


def _score(s: dict[str, Any]) -> tuple[float, float, float]:
    """Lower is better: the share of seeds within 2% of the best by 25% of the grid's compute (the goal, and
    robust where a median is not: a quarter of seeds that never get there make a median jump), then the median."""
    median = s["compute_to_2pct_over_grid"]
    return (-s["reached_2pct_within_25pct_grid"], median if math.isfinite(median) else math.inf, -s["reached_2pct"])


def _sweep(evaluate: Any) -> dict[str, Any]:
    """Coordinate search over SWEEP: one knob at a time (and the PAIRS) around the demo's values, then one knob at
    a time around the best setting so far, until the best stays put (at most four stages)."""
    seen: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    stages: list[dict[str, Any]] = []
    center: dict[str, Any] = {}
    while len(stages) < 4:
        labels = []
        for setting in _settings(center):
            label = _label(_overrides(setting))
            if label not in seen:
                seen[label] = (setting, evaluate(_overrides(setting)))
            labels.append(label)
        brief = {k: {m: v for m, v in seen[k][1].items() if not m.startswith("per_seed")} for k in labels}
        stages.append({"center": _label(_overrides(center)), "settings": brief})
        best = min(seen.values(), key=lambda v: _score(v[1]))[0]
        if best == center:
            break
        center = best
    label = _label(_overrides(center))
    scored_by = " ".join((_score.__doc__ or "").split())
    return {"scored_by": scored_by, "stages": stages, "best": label, "best_summary": seen[label][1], "setting": center}


def _yaml(v: Any) -> str:
    return "null" if v is None else str(v)


def _get(spec: Any, dotted: str) -> Any:
    section, field = dotted.split(".")
    return getattr(getattr(spec, section), field)


def _percentiles(xs: list[float]) -> dict[str, float]:
    """Median and quartiles; a run that never got there (inf, or -inf for an objective) can make them so."""
    s = sorted(xs)
    if not s:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan}

    def q(p: float) -> float:
        i = p * (len(s) - 1)
        lo, hi = math.floor(i), math.ceil(i)
        if math.isinf(s[lo]) or math.isinf(s[hi]):  # between a value and "never": the worse one
            return s[lo] if s[lo] == -math.inf else s[hi]
        return s[lo] + (s[hi] - s[lo]) * (i - lo)

    return {"median": q(0.5), "q1": q(0.25), "q3": q(0.75)}


def _finite(x: Any) -> Any:
    """JSON has no inf or NaN: a strategy that never got there is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def run_search(spec: Any, table: Table, delay_s: float, storage: str) -> list[tuple[str, int, float]]:
    """One search through Ray Tune: (trial id, samples_seen, objective) for every result, in arrival order."""
    from ray import tune

    from gridrun.searcher import build_searcher
    from gridrun.spec import to_optuna
    from gridrun.stopping import build_stopping

    events: list[tuple[str, int, float]] = []

    class Record(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            events.append((trial.trial_id, int(result["samples_seen"]), float(result["objective"])))

    searched, _ = to_optuna(spec.search.space)
    reasons: dict[str, str] = {}
    scheduler, stopper = build_stopping(spec, reasons)
    tuner = tune.Tuner(
        replay_trainable(spec, table, delay_s=delay_s),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(spec, searched),
            scheduler=scheduler,
            num_samples=spec.search.num_trials,
            max_concurrent_trials=spec.search.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"replay-{time.monotonic_ns()}", storage_path=storage, stop=stopper, callbacks=[Record()], verbose=0
        ),
    )
    results = tuner.fit()
    if results.errors:  # a replay that fails would quietly look like a cheap search
        raise RuntimeError(f"{len(results.errors)} replayed trials failed; the first: {results.errors[0]!r}")
    return events


def curve(events: list[tuple[str, int, float]]) -> list[tuple[int, float]]:
    """(compute so far, best objective so far) after each result."""
    latest: dict[str, int] = {}
    total, best, out = 0, -math.inf, []
    for trial, seen, objective in events:
        total += seen - latest.get(trial, 0)
        latest[trial] = seen
        best = max(best, objective)
        out.append((total, best))
    return out


def grid_curve(table: Table, seed: int) -> list[tuple[int, float]]:
    """The full grid, every config run to its end one after another, in a seeded random order."""
    keys = sorted(table)
    random.Random(seed).shuffle(keys)
    return curve([(str(k), int(row["samples_seen"]), row["objective"]) for k in keys for row in table[k]])


def first_compute(c: list[tuple[int, float]], target: float) -> float:
    return next((float(x) for x, best in c if best >= target), math.inf)


def best_at(c: list[tuple[int, float]], compute: float) -> float:
    """Best objective reported within ``compute`` (-inf: no result yet)."""
    return max((best for x, best in c if x <= compute), default=-math.inf)


def summarize(curves: list[list[tuple[int, float]]], target: float, grid: int, equal: float) -> dict[str, Any]:
    to_target = [first_compute(c, target) / grid for c in curves]
    return {
        "compute_to_2pct_over_grid": _percentiles(to_target)["median"],
        "compute_to_2pct_over_grid_quartiles": _percentiles(to_target),
        "reached_2pct": sum(math.isfinite(x) for x in to_target) / len(to_target),
        "reached_2pct_within_25pct_grid": sum(x <= 0.25 for x in to_target) / len(to_target),
        "total_compute_over_grid": _percentiles([c[-1][0] / grid for c in curves]),
        "best_objective": _percentiles([c[-1][1] for c in curves]),
        "best_at_equal_compute": _percentiles([best_at(c, equal) for c in curves]),
        "best_at_25pct_grid": _percentiles([best_at(c, 0.25 * grid) for c in curves]),
        "per_seed_compute_to_2pct_over_grid": [round(x, 4) if math.isfinite(x) else None for x in to_target],
    }


def _search(spec: Any, table: Table, backend: str, delay_s: float, storage: str) -> list[tuple[int, float]]:
    """One seeded search, through the Tuner or the Ray-free loop; its (compute, best so far) curve."""
    if backend == "tune":
        t0 = time.perf_counter()
        c = curve(run_search(spec, table, delay_s, storage))
        print(f"[bench]   seed {spec.search.seed}: {time.perf_counter() - t0:.1f}s", flush=True)
        return c
    return curve(simulate(spec, table))


def _curve_data(curves: dict[str, list[list[tuple[int, float]]]], grid: int) -> dict[str, dict[str, list]]:
    """Best so far at each compute (a share of the grid's), median and quartiles over seeds: what the plot shows.
    Each line stops where the longest seed stopped."""
    xs = [round(0.02 * 1.05**i, 4) for i in range(81) if 0.02 * 1.05**i < 1.0] + [1.0]
    out = {}
    for name, cs in curves.items():
        end = max(c[-1][0] for c in cs) / grid
        here = [x for x in xs if x < end] + [round(end, 4)]
        per_x = [_percentiles([best_at(c, x * grid) for c in cs]) for x in here]
        out[name] = {"x": here, **{q: [round(p[q], 4) for p in per_x] for q in ("median", "q1", "q3")}}
    return out


def _plot(data: dict[str, dict[str, list]], target: float, seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def finite(v: list) -> list[float]:
        return [x if x is not None and math.isfinite(x) else math.nan for x in v]

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, d in data.items():
        strong = name == DEFAULT or name.startswith(CANDIDATE)
        (line,) = ax.plot(d["x"], finite(d["median"]), label=name, lw=2.4 if strong else 1.3)
        ax.fill_between(d["x"], finite(d["q1"]), finite(d["q3"]), color=line.get_color(), alpha=0.08)
    ax.axhline(target, color="k", ls=":", lw=1, label=f"within {TOLERANCE:.0%} of the table's best")
    ax.axvline(0.25, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(0.02, 1.05)
    ax.set_ylim(-0.05, 1.0)
    ax.set_xlabel("compute (samples seen, summed over trials) / the full grid's compute")
    ax.set_ylabel("best objective so far (median; IQR shaded)")
    ax.set_title(f"gridrun on replayed learning curves of the demo study ({seeds} seeds each)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(overrides: list[str]) -> str:
    return ", ".join(overrides) or "demo values"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--table", type=Path, default=ROOT / "bench" / "replay" / "table.csv")
    ap.add_argument("--backend", choices=["tune", "sim"], default="tune", help="what runs the strategy table")
    ap.add_argument("--delay", type=float, default=0.005, help="tune: seconds slept per 32 replayed samples")
    ap.add_argument("--candidate", action="append", default=[], help="an override of the default to compare too")
    ap.add_argument("--no-sweep", action="store_true", help="skip the defaults sweep (simulated)")
    ap.add_argument("--holdout", type=int, default=100, help="seeds (simulated) for the held-out check; 0: none")
    ap.add_argument("--only", default="", help="run only the strategies whose name contains this")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_efficiency.json")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from --out's curves")
    args = ap.parse_args()
    if args.replot:
        done = json.loads(args.out.read_text())
        _plot(done["curves"], done["table"]["target"], done["seeds"], args.out.with_suffix(".png"))
        return

    table = load_table(args.table)
    best = max(row["objective"] for rows in table.values() for row in rows)
    target = best - TOLERANCE * abs(best)
    grid = sum(int(rows[-1]["samples_seen"]) for rows in table.values())
    strategies = {k: v for k, v in STRATEGIES.items() if args.only in k}
    if args.candidate:  # and random + ASHA with the candidate's ASHA, so the comparison stays fair
        strategies[f"{CANDIDATE}: {_label(args.candidate)}"] = args.candidate
        asha = [o for o in args.candidate if o.startswith("scheduler.")]
        strategies[f"random + ASHA ({_label(asha)})"] = [*STRATEGIES["random + ASHA"], *asha]
    t0 = time.perf_counter()

    def runs(overrides: list[str], backend: str, seeds: range | None = None) -> list[list[tuple[int, float]]]:
        return [
            _search(demo_spec([*BASE, *overrides, f"search.seed={s}"]), table, backend, args.delay, storage)
            for s in seeds or range(args.seeds)
        ]

    storage = ""
    if args.backend == "tune":
        from gridrun.launch import start_ray

        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
        storage = tempfile.mkdtemp(prefix="gridrun-replay-")
        start_ray(demo_spec(BASE))
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
    try:
        curves: dict[str, list[list[tuple[int, float]]]] = {}
        for name, overrides in strategies.items():
            curves[name] = runs(overrides, args.backend)
            print(f"[bench] {name} ({args.backend}): {args.seeds} seeds ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        if args.backend == "tune":
            import ray

            ray.shutdown()
    curves[GRID] = [grid_curve(table, s) for s in range(args.seeds)]
    equal = statistics.median(c[-1][0] for c in curves.get(DEFAULT, curves[GRID]))
    summary = {name: summarize(cs, target, grid, equal) for name, cs in curves.items()}
    g = summary[GRID]  # a grid runs every config before it knows which is best: its cost is all of it
    g["compute_to_2pct_over_grid_if_lucky_order"] = g["compute_to_2pct_over_grid"]
    g["compute_to_2pct_over_grid"] = 1.0
    for name, s in summary.items():
        s["overrides"] = _label(strategies.get(name, []))

    simulated: dict[str, Any] = {}
    if args.backend == "tune":  # the same strategies through the Ray-free loop, to show the two agree
        simulated = {name: summarize(runs(o, "sim"), target, grid, equal) for name, o in strategies.items()}
    sweep: dict[str, Any] = {}
    if not args.no_sweep:
        sweep = _sweep(lambda o: summarize(runs(o, "sim"), target, grid, equal))
        print(f"[bench] sweep: {len(sweep['stages'])} stages ({time.perf_counter() - t0:.0f}s), best {sweep['best']}")

    holdout: dict[str, Any] = {}
    if args.holdout:  # the sweep's pick and the candidate, each knob reverted in turn, on seeds the sweep never saw
        seeds = range(HOLDOUT_SEED, HOLDOUT_SEED + args.holdout)
        picks = [[], args.candidate, _overrides(sweep["setting"]) if sweep else []]
        points = {_label(p): p for p in picks} | {
            f"{_label(p)} | {o.split('=')[0]} back to the demo value": [x for x in p if x != o]
            for p in picks
            for o in p
        }
        holdout = {
            "seeds": f"{seeds.start}-{seeds.stop - 1}",
            "settings": {k: summarize(runs(o, "sim", seeds), target, grid, equal) for k, o in points.items()},
        }
        print(f"[bench] held out: {len(points)} settings x {len(seeds)} seeds ({time.perf_counter() - t0:.0f}s)")

    spec = demo_spec(BASE)
    best_key = max(table, key=lambda k: max(r["objective"] for r in table[k]))
    out = {
        "what": "gridrun strategies replayed on recorded learning curves of the demo study (bench/replay/table.csv)",
        "backend": args.backend,
        "table": {
            "configs": len(table),
            "rounds": sum(len(r) for r in table.values()),
            "best_objective": best,
            "best_config": dict(zip(["train.lr", "lora.r", "data.sample_ratio"], best_key, strict=True)),
            "configs_within_2pct": sorted(str(k) for k in table if max(r["objective"] for r in table[k]) >= target),
            "target": target,
            "tolerance": f"best - {TOLERANCE} * |best|",
            "full_grid_compute": grid,
        },
        "seeds": args.seeds,
        "num_trials": spec.search.num_trials,
        "max_concurrent": spec.search.max_concurrent,
        "equal_compute": {"samples": equal, "over_grid": equal / grid, "defined_as": f"median total of {DEFAULT}"},
        "defaults": {k: _get(spec, k) for k in SWEEP},
        "strategies": summary,
        "strategies_simulated": simulated,
        "defaults_sweep_simulated": {k: v for k, v in sweep.items() if k != "setting"},
        "held_out_simulated": holdout,
        "wall_s": round(time.perf_counter() - t0, 1),
        "curves": _curve_data(curves, grid),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(out), indent=2) + "\n")
    _plot(out["curves"], target, args.seeds, args.out.with_suffix(".png"))
    for name, s in summary.items():
        q = s["compute_to_2pct_over_grid_quartiles"]
        print(
            f"{name:34s} to 2%: {s['compute_to_2pct_over_grid']:.3f} of grid (IQR {q['q1']:.3f}-{q['q3']:.3f}, "
            f"reached {s['reached_2pct']:.0%}); best at equal compute {s['best_at_equal_compute']['median']:.3f}"
        )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
