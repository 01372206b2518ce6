"""What a `gridrun` command costs around the work it does: the LoRA-target check at every validate and launch,
and the interpreter's exit after a launch. Side by side in one invocation, interleaved:

  lora check   cold (an empty cache: the model is built on the meta device) vs warm (names read from the cache),
               each in a fresh process, imports included
  exit         a 1-trial launch of the tiny demo as the command line runs it (``python -m gridrun.cli``: the
               last garbage collection skipped) vs ``main(argv)`` called from a script (collection kept);
               measured from the last line the command prints to the process's exit

    python bench/cli_overhead.py            # 3 rounds, about 2 minutes
    python bench/cli_overhead.py --rounds 1
Writes bench/results/cli_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "forgetting.yaml"
LORA_CHECK = (
    "import sys; from gridrun.spec import load_spec; from gridrun.validate import check_lora_targets; "
    "check_lora_targets(load_spec(sys.argv[1]))"
)
AS_SCRIPT = "import sys; from gridrun.cli import main; sys.exit(main(sys.argv[1:]))"
LAUNCH = ["launch", str(DEMO), "--set", "search.num_trials=1", "--set", "data.train_size=32"]


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, seconds from the last output line to exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = t0
    assert proc.stdout is not None
    for _ in proc.stdout:
        last = time.perf_counter()
    rc = proc.wait()
    end = time.perf_counter()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {rc}")
    return end - t0, end - last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows: dict[str, list[float]] = {"lora_cold_s": [], "lora_warm_s": [], "exit_cli_s": [], "exit_script_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            cache = Path(tmp) / f"cache{i}"
            lenv = {**env, "GRIDRUN_CACHE": str(cache)}
            rows["lora_cold_s"].append(_timed([py, "-c", LORA_CHECK, str(DEMO)], lenv, ROOT)[0])
            rows["lora_warm_s"].append(_timed([py, "-c", LORA_CHECK, str(DEMO)], lenv, ROOT)[0])
            for name, head in (("exit_cli_s", [py, "-m", "gridrun.cli"]), ("exit_script_s", [py, "-c", AS_SCRIPT])):
                work = Path(tmp) / f"{name}{i}"
                work.mkdir()
                rows[name].append(_timed([*head, *LAUNCH], env, work)[1])
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()), flush=True)
    med = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    result = {
        "what": "seconds around a gridrun command's own work (medians of interleaved rounds)",
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "median": med,
        "all": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "lora_check_saved_s": round(med["lora_cold_s"] - med["lora_warm_s"], 3),
        "exit_saved_s": round(med["exit_script_s"] - med["exit_cli_s"], 3),
    }
    out = ROOT / "bench" / "results" / "cli_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"]), f"-> {out}")


if __name__ == "__main__":
    main()
