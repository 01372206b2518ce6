"""Node-loss drill on object storage, run inside a network namespace of its own (``unshare -n``) like
:mod:`tests.cluster_drill`: an S3-compatible server (moto) on this namespace's loopback holds the experiment
(``tracking.storage: s3://gridrun/exp``), a two-node Ray cluster runs it. The worker node is killed once one of
its trials has saved two checkpoints to the bucket; that trial goes on on the head, from its checkpoint read back
from the bucket; then the driver is SIGKILLed and ``gridrun resume s3://...`` finishes the experiment. Prints one
JSON line: what happened, what is on local disk, and what ``gridrun report s3://...`` printed. The bucket's
experiment is copied to ``WORKDIR/bucket/`` at the very end (the test reads Tune's record there).

    unshare -n -- python -m tests.cluster_drill_s3 WORKDIR
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster_drill import ROOT, _kill_session, _until, gridrun, in_own_namespace, start_cluster
from tests.s3server import BUCKET, client, keys, s3_server

STORAGE = f"s3://{BUCKET}/exp"


def _checkpoints(env: dict[str, str]) -> dict[str, list[tuple[int, int]]]:
    """Trial folder -> (pid that wrote it, samples seen there) of each checkpoint still in the bucket, oldest first."""
    s3 = client(env)
    out: dict[str, list[int]] = {}
    for key in keys(env, prefix="exp/"):
        parts = key.split("/")  # exp/<experiment>/<trial folder>/checkpoint_N/position.json
        if len(parts) == 5 and parts[3].startswith("checkpoint_") and parts[4] == "position.json":
            with contextlib.suppress(Exception):  # an object being replaced: the next poll reads it
                body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                pos = json.loads(body)
                out.setdefault(parts[2], []).append((int(pos["pid"]), int(pos["samples_seen"])))
    return out


def _done(log: Path) -> int:
    """How many trials a gridrun command's console said were done."""
    text = log.read_text() if log.is_file() else ""
    return sum(" done (" in line for line in text.splitlines())


def main(work: Path) -> dict:
    error = in_own_namespace()
    if error:
        return {"error": error}
    out: dict = {}
    before = {p.name for p in work.iterdir()}
    with s3_server() as s3env:  # on this namespace's loopback: the Ray nodes reach it, nothing outside does
        env = {**os.environ, **s3env, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
        nodes: list[subprocess.Popen] = []
        procs: list[subprocess.Popen] = []
        try:
            start_cluster(work, env, out, nodes)
            if "error" in out:
                return out
            head, worker = nodes
            t0 = time.monotonic()
            spec = str(ROOT / "search_spaces/forgetting.yaml")
            launch = gridrun("launch", spec, work, env, "launch.log", storage=STORAGE)
            procs.append(launch)

            def on_worker_node() -> tuple[str, int] | None:
                for trial, saved in _checkpoints(s3env).items():
                    if len(saved) >= 2 and os.getsid(saved[-1][0]) == worker.pid:
                        return trial, len(saved)
                return None

            trial, n = _until(on_worker_node, 240, "a trial with two checkpoints in the bucket, on the worker node")
            _kill_session(worker.pid)
            out.update(killed_trial_dir=trial, killed_after_checkpoints=n, worker_killed_at_s=_s(t0))
            out["worker_checkpoint_samples"] = sorted(n for _, n in _checkpoints(s3env).get(trial, []))

            def on_head() -> int | None:
                on = [n for p, n in _checkpoints(s3env).get(trial, []) if _sid(p) == head.pid]
                if on:  # what the trial had seen at its first checkpoint on the head: it went on from where?
                    out["head_first_checkpoint_samples"] = min(on)
                return len(on) or None

            out["head_checkpoints_before_driver_kill"] = _until(on_head, 240, f"trial {trial} going on on the head")
            _kill_session(launch.pid)  # SIGKILL the driver: nothing of it is left to close anything
            out.update(driver_killed_at_s=_s(t0), done_before_driver_kill=_done(work / "launch.log"))
            experiment = {k.split("/")[1] for k in keys(s3env, prefix="exp/")}.pop()
            out["experiment"] = f"{STORAGE}/{experiment}"
            # its rounds replayed faster: nothing is killed from here on, and the head runs them one at a time
            resume = gridrun("resume", out["experiment"], work, env, "resume.log", delay_s=0.05)
            procs.append(resume)
            out["resume_rc"] = resume.wait(timeout=300)
            out.update(done_by_resume=_done(work / "resume.log"), wall_s=_s(t0))
            report = subprocess.run(
                [sys.executable, "-m", "gridrun.cli", "report", out["experiment"]],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out.update(report_rc=report.returncode, report=report.stdout + report.stderr)
            out["local_after"] = sorted({p.name for p in work.iterdir()} - before)
            out["objects"] = len(keys(s3env, prefix="exp/"))
            _copy_out(s3env, work / "bucket")
            return out
        finally:
            for p in (*procs, *reversed(nodes)):
                _kill_session(p.pid)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:  # its worker has exited since
        return None


def _s(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


def _copy_out(env: dict[str, str], dest: Path) -> None:
    s3 = client(env)
    for key in keys(env, prefix="exp/"):
        path = dest / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
