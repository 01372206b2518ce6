"""Node-loss drill, run inside a fresh network namespace where only loopback exists (``unshare -n``): a two-node
Ray cluster on 127.0.0.1, a gridrun experiment on it (the replay trainable, one trial per node at a time), and
the worker node killed — raylet, agents and its trials' processes, SIGKILL — once one of its trials has saved
two checkpoints. Prints one JSON line: the node addresses Ray reported, which trial was running on the node
that died, and how the experiment ended.

    unshare -n -- python -m tests.cluster_drill WORKDIR

Ray 2.60 swaps a requested 127.0.0.1 for the machine's interface address; in a namespace with no interface but
loopback it has nothing to swap to. The drill checks that before anything runs, and stops if it is not so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = 6379
TRIALS = 6
#: The drill's experiment: 6 trials of 4 to 16 replayed eval rounds (9 to 16 for the seeded sampler's first six
#: configs, so a trial killed after two checkpoints has 7 or more rounds to go), 0.2 s each, one CPU per trial.
OVERRIDES = [
    "data.train_size=64",
    "train.batch_size=8",
    "train.epochs=2",
    "train.eval_every=1",
    f"search.num_trials={TRIALS}",
    "search.max_concurrent=2",
    "scheduler.type=none",
    "forgetting.budget=null",
    "resources.cpu=1",
]


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def _until(condition, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.1)  # polling a condition, bounded by the timeout


def _session(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    out.append(int(entry))
    return out


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ray_start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    ray = str(Path(sys.executable).parent / "ray")
    with log.open("w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(
            [ray, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a session per node: killing one kills exactly that node
        )


CHECK_NODES = """
import json, ray
ray.init(address="127.0.0.1:%d", logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in nodes],
                  "gcs": ray.get_runtime_context().gcs_address}))
"""


def in_own_namespace() -> str | None:
    """None when this process is in a network namespace where only loopback exists (brought up), else why not."""
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's, unlike /sys/class/net
    if interfaces != ["lo"]:
        return f"not in a network namespace of its own: interfaces {interfaces}"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return None


def start_cluster(work: Path, env: dict[str, str], out: dict, nodes: list[subprocess.Popen]) -> None:
    """A head and a worker node on 127.0.0.1, one CPU each, appended to ``nodes`` as they start (each in a
    session of its own: the caller kills them); ``out["addresses"]`` the addresses Ray reports (``out["error"]``
    when one is not loopback)."""
    tmp = tempfile.mkdtemp(prefix="grd", dir="/tmp")  # short: Ray's socket paths live under it
    nodes.append(
        _ray_start(
            ["--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={tmp}"],
            work / "head.log",
            env,
        )
    )
    _until(lambda: _listening(PORT), 120, "the head node")
    nodes.append(_ray_start([f"--address=127.0.0.1:{PORT}", "--num-cpus=1"], work / "worker.log", env))

    def two_nodes() -> dict | None:
        r = subprocess.run(
            [sys.executable, "-c", CHECK_NODES % PORT], capture_output=True, text=True, env=env, timeout=60
        )
        found = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        return found if found and len(found["nodes"]) == 2 else None

    seen = _until(two_nodes, 120, "two live nodes")
    out["addresses"] = [*seen["nodes"], seen["gcs"].rsplit(":", 1)[0]]
    if not all(_loopback(a) for a in out["addresses"]):
        out["error"] = f"Ray reports a non-loopback address: {out['addresses']}; nothing launched"


def gridrun(
    command: str, target: str, work: Path, env: dict[str, str], log: str, delay_s: float = 0.2, storage: str = ""
) -> subprocess.Popen:
    """``gridrun COMMAND TARGET`` with the replay trainable (``launch`` gets the drill's spec, on the cluster, with
    its experiments in ``storage`` when given)."""
    args = [sys.executable, "-m", "tests.replay_trainable", str(delay_s), command, target]
    if command == "launch":
        overrides = [*OVERRIDES, f"tracking.storage={storage}"] if storage else OVERRIDES
        args += ["--address", f"127.0.0.1:{PORT}", *[a for o in overrides for a in ("--set", o)]]
    with (work / log).open("w") as f:  # the child keeps its own descriptor
        return subprocess.Popen(args, cwd=work, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def main(work: Path) -> dict:
    error = in_own_namespace()
    if error:
        return {"error": error}
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    out: dict = {}
    nodes: list[subprocess.Popen] = []
    launch = None
    try:
        start_cluster(work, env, out, nodes)
        if "error" in out:
            return out
        worker = nodes[1]
        t0 = time.monotonic()
        launch = gridrun("launch", str(ROOT / "search_spaces/forgetting.yaml"), work, env, "launch.log")

        def on_worker_node() -> tuple[str, int] | None:
            """A trial running on the worker node with two checkpoints saved: (its folder, checkpoints)."""
            for trial_dir in (work / "gridrun_results").glob("*/replay_*"):
                ckpts = sorted(trial_dir.glob("checkpoint_*/position.json"))
                if len(ckpts) < 2:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    pid = json.loads(ckpts[-1].read_text())["pid"]
                    if os.getsid(pid) == worker.pid:
                        return trial_dir.name, len(ckpts)
            return None

        trial_dir, n = _until(on_worker_node, 240, "a checkpointed trial on the worker node")
        _kill_session(worker.pid)
        out.update(killed_trial_dir=trial_dir, killed_after_checkpoints=n, killed_at_s=round(time.monotonic() - t0, 1))
        out["launch_rc"] = launch.wait(timeout=400)
        out["wall_s"] = round(time.monotonic() - t0, 1)
        return out
    finally:
        for p in (launch, *reversed(nodes)):
            if p is not None:
                _kill_session(p.pid)


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
