"""Record the learning curves the replay benchmark searches: the demo study over a dense grid, run to completion.

Every grid config runs ``trainables.qlora_sft.run`` — the loop a Tune trial runs — on the demo spec
(``search_spaces/forgetting.yaml``) with the overrides below and the config substituted through
``spec.with_params`` (as ``gridrun.launch`` builds a trial's spec), one torch thread each (a ``cpu: 1`` trial), two
processes at a time. gridrun has no grid sampler, and ASHA and the forgetting budget are left out on purpose: every
curve is recorded to its end, so any scheduler can be replayed over it. Each eval round becomes one row of
``bench/replay/table.csv``; the spec used is written next to it (``record_spec.yaml``, ``record_meta.json``).

    python bench/replay/record.py                      # the committed grid (about 30 minutes on 2 cores)
    python bench/replay/record.py --limit 2 --out /tmp/t.csv   # time two configs first
    python bench/replay/record.py --set data.eval_size=128 --out bench/replay/table_eval128.csv  # 128 eval prompts
    python bench/replay/record.py --set train.seed=1 --only '[{"train.lr": 0.0008326, "lora.r": 16,
        "data.sample_ratio": 0.625}]' --out bench/replay/reruns/seed1.csv   # re-runs with another training seed
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import product
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

#: What the recording changes in the demo spec: eval rounds every 32 samples instead of 64, so the shortest curve
#: (sample ratio 0.25: 256 samples) still has 8 points. ASHA and the forgetting budget are the Tuner's: ``run``
#: never reads them, so every curve is recorded to its end.
OVERRIDES = ["train.eval_every=4"]
#: The grid over the demo's space (train.lr log-uniform [1e-4, 2e-2], lora.r in {2, 4, 8, 16},
#: data.sample_ratio uniform [0.25, 1]): learning rates evenly spaced on the log scale, both ends included;
#: the two extreme ranks (the replay searches exactly these), sized so the recording takes about 30 minutes
#: on 2 shared cores (a config took 50-180 s there, most of it generation in the eval rounds).
LRS = [1e-4 * (200 ** (i / 5)) for i in range(6)]
RANKS = [2, 16]
RATIOS = [0.25, 0.625, 1.0]
#: The metrics kept per eval round (the keys gridrun's stoppers, ASHA, searcher and summary read).
KEYS = [
    "samples_seen",
    "step",
    "progress",
    "epoch",
    "objective",
    "task/format_success",
    "task/schema_match",
    "task/exact_match",
    "task/duplicate_json_rate",
    "forget/delta",
    "forget/probe_loss",
    "forget/probe_loss_base",
    "train/loss",
    "train/lr",
    "data/train_samples",
    "data/train_samples_total",
    "data/eval_samples",
]
COLUMNS = ["train.lr", "lora.r", "data.sample_ratio", "round", *KEYS, "wall_s"]


def demo_spec(overrides: list[str] | None = None) -> Any:
    """The demo spec with the recording's overrides (and any extra), as the replay benchmark also loads it."""
    from gridrun.spec import load_spec

    return load_spec(ROOT / "search_spaces" / "forgetting.yaml", [*OVERRIDES, *(overrides or [])])


def grid() -> list[dict[str, Any]]:
    return [
        {"train.lr": float(f"{lr:.4g}"), "lora.r": r, "data.sample_ratio": ratio}
        for lr, r, ratio in product(LRS, RANKS, RATIOS)
    ]


def tidy(path: Path, configs: list[dict[str, Any]]) -> None:
    """Keep only the grid's configs (a resumed recording may hold others), ordered by config and round."""
    keys = [(c["train.lr"], c["lora.r"], c["data.sample_ratio"]) for c in configs]
    with path.open() as f:
        rows = list(csv.DictReader(f))

    def key(r: dict[str, str]) -> tuple[float, int, float]:
        return float(r["train.lr"]), int(r["lora.r"]), float(r["data.sample_ratio"])

    rows = sorted((r for r in rows if key(r) in keys), key=lambda r: (*key(r), int(r["round"])))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _trial(trial_spec_json: dict[str, Any], config: dict[str, Any], baseline: Any) -> list[dict[str, Any]]:
    """One grid config, in a worker process, as ``trainables.qlora_sft.qlora_sft`` runs it under Tune."""
    import logging
    import random
    import warnings

    import torch

    from gridrun.spec import validate_dict
    from trainables.qlora_sft import run

    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    trial_spec = validate_dict(trial_spec_json)
    torch.set_num_threads(max(1, int(trial_spec.resources.cpu)))
    spec = trial_spec.with_params(config)
    random.seed(spec.train.seed)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def report(metrics: dict[str, Any], _ckpt: Path | None) -> None:
        row = {**config, "round": len(rows) + 1, **{k: metrics.get(k) for k in KEYS}}
        rows.append({**row, "wall_s": round(time.perf_counter() - t0, 2)})

    run(spec, baseline, report)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "table.csv", help="CSV written (appended: resumable)")
    ap.add_argument("--workers", type=int, default=2, help="configs run at once (one core each)")
    ap.add_argument("--limit", type=int, default=None, help="record only the first N configs not yet done")
    ap.add_argument(
        "--only", type=str, default=None, help="a config or a list of them as JSON, e.g. '{\"train.lr\": 1e-3, ...}'"
    )
    ap.add_argument("--set", dest="extra", action="append", default=[], help="a further spec override")
    args = ap.parse_args()

    from forgetting import cached_baselines
    from gridrun.spec import to_optuna
    from trainables.qlora_sft import compute_baselines

    spec = demo_spec(args.extra)
    _, fixed = to_optuna(spec.search.space)
    trial_spec = spec.with_params(fixed)  # what gridrun.launch hands every trial
    baseline, _ = cached_baselines(trial_spec, compute_baselines)

    done: set[tuple[float, int, float]] = set()
    if args.out.is_file():
        with args.out.open() as f:
            done = {(float(r["train.lr"]), int(r["lora.r"]), float(r["data.sample_ratio"])) for r in csv.DictReader(f)}
    only = json.loads(args.only) if args.only else None
    configs = (only if isinstance(only, list) else [only]) if only else grid()
    todo = [c for c in configs if (c["train.lr"], c["lora.r"], c["data.sample_ratio"]) not in done]
    todo.sort(key=lambda c: -c["data.sample_ratio"])  # the long ones first: the pool ends with short ones
    todo = todo[: args.limit] if args.limit else todo
    meta = {
        "spec": "search_spaces/forgetting.yaml",
        "overrides": [*OVERRIDES, *args.extra],
        "baseline": baseline.to_json(),
        "grid": {"train.lr": [float(f"{x:.4g}") for x in LRS], "lora.r": RANKS, "data.sample_ratio": RATIOS},
    }
    if args.out == HERE / "table.csv":
        (HERE / "record_spec.yaml").write_text(
            "# written by bench/replay/record.py: the demo spec with its overrides; the grid is in record_meta.json\n"
            + __import__("yaml").safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        )
        (HERE / "record_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    elif not args.only:  # another recording of the grid (e.g. --set data.eval_size=128): its overrides beside it
        args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    print(f"[record] {len(todo)} configs to run ({len(done)} done), {args.workers} at a time", flush=True)
    new = not args.out.is_file()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with (
        args.out.open("a", newline="") as f,
        ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool,
    ):
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        futures = {pool.submit(_trial, trial_spec.model_dump(mode="json"), c, baseline): c for c in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            rows = fut.result()
            writer.writerows(rows)
            f.flush()
            last = rows[-1]
            print(
                f"[record] {i}/{len(todo)} {futures[fut]} rounds {len(rows)} samples {last['samples_seen']} "
                f"objective {last['objective']:.3f} best {max(r['objective'] for r in rows):.3f} "
                f"wall {last['wall_s']:.0f}s (elapsed {time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    if not args.only:
        tidy(args.out, configs)


if __name__ == "__main__":
    main()
