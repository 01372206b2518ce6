"""What saving Tune's experiment state when each trial ends (gridrun.snapshots) costs, on the 200 replayed trials of
tests/test_drills.py::test_200_replayed_trials (tests/replay_trainable.py: recorded curves replayed in
milliseconds, so the driver's own costs are all there is to see).

Three arms, each in a fresh process, alternated side by side:
  before    — Tune's periodic saves only ("auto": every 10 s or more), SnapshotOnTrialEnd disabled as a Ray
              without the hook it needs would have it
  after     — the same, plus a save waited onto storage at the end of a step in which a trial ended, kept to 5%
              of the driver's time (gridrun's default)
  every_end — such a save at the end of every step in which a trial ended, no share kept (the rejected design)
Per arm: launch wall time; every save (count, seconds, per save at the start and the end of the run: a save
grows with the trials it holds) and SnapshotOnTrialEnd's among them; how long a trial's end waited for a save that
holds it (a SIGKILL in that time would rerun the trial). Written to bench/results/state_saves.json.

    python bench/state_saves.py               # 2 rounds of the 3 arms, ~8 min on 2 busy cores
    python bench/state_saves.py --rounds 1
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402


def _instrument(saves: list[dict[str, Any]], held: list[float]) -> None:
    """Time every ``TuneController.checkpoint`` call that saved (most return at once, within Tune's period), noting
    whether SnapshotOnTrialEnd made it; and how long each trial's end waited for the save that holds it."""
    from ray.tune.execution.tune_controller import TuneController

    from gridrun.snapshots import SnapshotOnTrialEnd

    save_to_dir, checkpoint = TuneController.save_to_dir, TuneController.checkpoint
    step_end, complete = SnapshotOnTrialEnd.on_step_end, SnapshotOnTrialEnd.on_trial_complete
    wrote, by_saver, ends = [0], [False], []

    def counted_save(self: Any) -> None:
        wrote[0] += 1
        save_to_dir(self)

    def timed_checkpoint(self: Any, force: bool = False, wait: bool = False) -> None:
        before, t0 = wrote[0], time.perf_counter()
        checkpoint(self, force=force, wait=wait)
        if wrote[0] > before:
            saves.append({"s": time.perf_counter() - t0, "saver": by_saver[0], "trials": len(self.get_trials())})
            done = time.perf_counter()
            held.extend(done - t for t in ends)  # any save holds every end before it
            ends.clear()

    def noted_end(self: Any, *args: Any, **kwargs: Any) -> None:
        ends.append(time.perf_counter())
        complete(self, *args, **kwargs)

    def marked_step_end(self: Any, *args: Any, **kwargs: Any) -> None:
        by_saver[0] = True
        try:
            step_end(self, *args, **kwargs)
        finally:
            by_saver[0] = False

    TuneController.save_to_dir = counted_save  # type: ignore[method-assign]
    TuneController.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    SnapshotOnTrialEnd.on_trial_complete = noted_end  # type: ignore[method-assign]
    SnapshotOnTrialEnd.on_step_end = marked_step_end  # type: ignore[method-assign]


ARMS = ("before", "after", "every_end")


def arm(name: str) -> dict[str, Any]:
    """One launch of the 200 replayed trials in this process; returns its figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gridrun.launch
    import gridrun.snapshots
    from gridrun.builtin.tiny_model import ensure_tiny_general
    from gridrun.spec import load_spec
    from tests.conftest import FORGETTING, TINY
    from tests.replay_trainable import MANY_TRIALS, replay_trainable

    ensure_tiny_general()
    gridrun.launch._trainable = replay_trainable(0.0, checkpoints=True)
    if name == "before":
        gridrun.snapshots._running_controller = lambda: None  # the degraded path: Tune's periodic saves only
    if name == "every_end":  # no share kept: a save at the end of every step in which a trial ended
        gridrun.snapshots.SnapshotOnTrialEnd.__init__.__defaults__ = (1.0,)
    saves: list[dict[str, Any]] = []
    held: list[float] = []
    _instrument(saves, held)
    work = Path(tempfile.mkdtemp(prefix="gridrun-bench-saves-"))
    os.chdir(work)
    spec = load_spec(
        FORGETTING,
        [*TINY, f"tracking.uri=sqlite:///{work}/mlruns.db", f"tracking.storage={work}/results", *MANY_TRIALS],
    )
    t0 = time.perf_counter()
    summary = gridrun.launch.launch(spec, quiet=True)
    wall = time.perf_counter() - t0
    assert len(summary["trials"]) == 200 and all(t["status"] == "TERMINATED" for t in summary["trials"])
    ours = [s["s"] for s in saves if s["saver"]]
    per = [s["s"] for s in saves]
    return {
        "arm": name,
        "launch_s": round(wall, 1),
        "tune_fit_s": round(float(summary["wall_s"]), 1),
        "saves": len(saves),  # Tune's periodic ones, its last (at the loop's end) and SnapshotOnTrialEnd's
        "saver_saves": len(ours),
        "save_total_s": round(sum(per), 2),
        "saver_total_s": round(sum(ours), 2),
        "save_ms_median_first_20": round(1000 * statistics.median(per[:20]), 1),
        "save_ms_median_last_20": round(1000 * statistics.median(per[-20:]), 1),
        "save_ms_max": round(1000 * max(per), 1),
        # how long a trial's end waited for a save holding it (what a SIGKILL in that time would rerun)
        "end_unsaved_s_median": round(statistics.median(held), 2),
        "end_unsaved_s_max": round(max(held), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the arms, alternated")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in a child process
    args = ap.parse_args()
    if args.arm:
        print("BENCH " + json.dumps(arm(args.arm)), flush=True)
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    runs: list[dict[str, Any]] = []
    steal0 = steal_s()
    for _ in range(args.rounds):
        for name in ARMS:
            r = subprocess.run(
                [sys.executable, __file__, "--arm", name], capture_output=True, text=True, env=env, cwd=ROOT
            )
            line = next((x for x in r.stdout.splitlines() if x.startswith("BENCH ")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            runs.append(json.loads(line[6:]))
            print(json.dumps(runs[-1]), flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs if r["arm"] == name)

    out = {
        "runs": runs,
        "median_tune_fit_s": {a: median(a, "tune_fit_s") for a in ARMS},
        "ratio_tune_fit_vs_before": {
            a: round(median(a, "tune_fit_s") / median("before", "tune_fit_s"), 3) for a in ARMS
        },
        "median_save_total_s": {a: median(a, "save_total_s") for a in ARMS},
        "median_end_unsaved_s_max": {a: median(a, "end_unsaved_s_max") for a in ARMS},
        "steal_s": round(steal_s() - steal0, 1),
        "cpu_count": os.cpu_count(),
    }
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "state_saves.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
