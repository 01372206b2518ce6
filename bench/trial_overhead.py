"""What gridrun's Tuner costs on top of the training loop it runs.

One trial (same model, data, steps, eval rounds, checkpoints) is run twice, side by side in one invocation:
  direct  — ``trainables.qlora_sft.run`` called in this process (1 torch thread, as a cpu=1 trial gets)
  tuner   — ``gridrun.launch`` with one trial: Ray start, OptunaSearch, stoppers, MLflow child run, checkpoint
            persistence, adapter artifact upload, summary
and the wall-time ratios are printed and written to bench/results/trial_overhead.json.

    python bench/trial_overhead.py                 # ~60 s trial
    python bench/trial_overhead.py --train-size 256  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-size", type=int, default=2816, help="training examples (2816 ≈ 60 s on one core)")
    ap.add_argument("--eval-every", type=int, default=40, help="optimizer steps between eval rounds")
    args = ap.parse_args()

    import torch

    from forgetting import cached_baselines
    from gridrun.launch import launch
    from gridrun.spec import load_spec
    from trainables.qlora_sft import compute_baselines, run

    work = Path(tempfile.mkdtemp(prefix="gridrun-bench-"))
    overrides = [
        f"data.train_size={args.train_size}",
        "data.sample_ratio=1.0",
        "train.epochs=1",
        f"train.eval_every={args.eval_every}",
        "search.num_trials=1",
        "scheduler.type=none",
        "search.space={}",
        "forgetting.budget=null",
        f"tracking.uri=sqlite:///{work}/mlruns.db",
        f"tracking.storage={work}/results",
    ]
    spec = load_spec(ROOT / "search_spaces" / "forgetting.yaml", overrides)
    base, _ = cached_baselines(spec, compute_baselines)  # warm: both paths reuse the cached value

    torch.set_num_threads(1)
    steal0 = steal_s()
    t0, c0 = time.perf_counter(), time.process_time()
    direct = run(spec, base, lambda m, d: None)
    t_direct, cpu_direct = time.perf_counter() - t0, time.process_time() - c0

    os.chdir(work)
    t0 = time.perf_counter()
    summary = launch(spec, quiet=True)
    t_launch = time.perf_counter() - t0
    t_fit = float(summary["wall_s"])
    steal = steal_s() - steal0

    via = summary["trials"][0]  # compare the last eval round: the summary's headline is the best checkpoint
    same = via["trained"] == direct["samples_seen"] and via["last"]["task"] == direct[spec.objective.metric]
    out = {
        "train_size": args.train_size,
        "steps": direct["step"],
        "direct_s": round(t_direct, 2),
        "tuner_fit_s": round(t_fit, 2),
        "launch_total_s": round(t_launch, 2),
        "ratio_fit_vs_direct": round(t_fit / t_direct, 3),
        "ratio_launch_vs_direct": round(t_launch / t_direct, 3),
        "same_result": same,
        "direct_cpu_s": round(cpu_direct, 2),  # ~direct_s on an idle machine; far less means the run waited
        "steal_s": round(steal, 1),  # CPU time the VM's host took away during both runs (/proc/stat)
        "cpu_count": os.cpu_count(),
    }
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "trial_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
