"""Starting Ray for an experiment: a local Ray on 127.0.0.1 only (Ray 2.60 would otherwise swap it for the interface
address and listen on every interface), or a cluster's address; its resources checked against a trial's needs."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec

__all__ = ["check_inputs_on_nodes", "local_inputs", "other_local_rays", "start_ray"]

log = logging.getLogger("gridrun")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray starts: every address it reports and every socket it opens is on 127.0.0.1.

    Ray 2.60 replaces a requested 127.0.0.1 with this machine's interface address (``resolve_ip_for_localhost``)
    and its GCS then listens on all interfaces, unless its local-only switch is off: the one Ray itself turns off
    on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. Ray reads that switch when it is imported,
    so an already-imported Ray gets the same value in its constants module; both are put back afterwards, so a
    later ``ray.init(address=...)`` in this process joins clusters as usual.
    """
    from ray._private import ray_constants  # private: the switch has no public setter

    env_before = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    const_before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const_before
        if env_before is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = env_before


def _on_loopback(address: str) -> bool:
    """A cluster address (``host:port``) on this machine's loopback: a head started with
    ``--node-ip-address=127.0.0.1``, which Ray would otherwise look for at the interface address (and never find)."""
    if "://" in address:  # ray:// is Ray Client's own connection, made to the host as given
        return False
    host = urlparse(f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def other_local_rays() -> list[int]:
    """The Ray instances already running on this machine, by the pid of each one's GCS server process."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info.get("name") == "gcs_server"]


def start_ray(spec: ExperimentSpec) -> dict[str, float]:
    """Join ``resources.address``, or start Ray on this machine bound to 127.0.0.1 only; returns the cluster's
    resources after checking a trial fits (one line and exit 2 otherwise, Ray shut down again)."""
    # The console shows gridrun's own lines; what the libraries print about themselves is noise to a newcomer:
    # Tune's experiment box and TensorBoard hint (printed whatever `verbose` says; the legacy reporter obeys
    # verbose=0), MLflow's "creating initial database tables" (MLflow resets its logger level on import).
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Tune keeps every checkpoint's record in each experiment snapshot (the CheckpointKeeper does retention):
    # keep only the score in those records, so snapshots stay small and quick to upload.
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    # Tune's result files are listed by launch and resume (launch._file_loggers), its TensorBoard files left out
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray turns token authentication on for a local cluster (good) and says so at every start (noise).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.resources.address:
        with _loopback_only() if _on_loopback(spec.resources.address) else contextlib.nullcontext():
            ray.init(address=spec.resources.address, log_to_driver=True, logging_level=logging.WARNING)
    else:
        others = len(other_local_rays())
        if others:
            log.warning(
                "%d other Ray instance%s already running on this machine (another launch?): each sizes its trials "
                "to all %d CPU cores, so they share them; set search.max_concurrent to run fewer trials at once",
                others,
                " is" if others == 1 else "s are",
                os.cpu_count() or 1,
            )
        with _loopback_only():
            ray.init(
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=True,
            )
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    gpu = spec.resources.gpu  # auto: resolved once the cluster is known (none: CPU trials)
    if gpu != "auto" and gpu > 0 and gpus < gpu:
        ray.shutdown()
        raise GridrunError(
            f"resources.gpu: {spec.resources.gpu} GPU per trial requested, but the Ray cluster "
            f"has {gpus:g} GPUs (trials would stay pending forever)"
        )
    if float(total.get("CPU", 0)) < spec.resources.cpu:
        ray.shutdown()
        raise GridrunError(
            f"resources.cpu: {spec.resources.cpu} CPUs per trial requested, but the Ray cluster "
            f"has {total.get('CPU', 0):g}"
        )
    if spec.resources.address:
        try:
            check_inputs_on_nodes(spec)
        except GridrunError:
            ray.shutdown()
            raise
    return total


def local_inputs(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(field, path) of every input the spec reads from a local file or folder (made absolute at load)."""
    from gridrun.sources import input_sources, is_local, judge_questions

    out = [(s.field, s.source) for s in input_sources(spec) if is_local(s.source)]
    questions = judge_questions(spec)
    if "judge" in spec.forgetting.measures and is_local(questions):
        out.append(("forgetting.options.judge.questions", questions))  # type: ignore[arg-type]
    return out


def check_inputs_on_nodes(spec: ExperimentSpec, timeout_s: float = 60.0) -> None:
    """One line naming a local input that a node of the Ray cluster cannot read: every node reads a trial's
    inputs (model folder, data files, probe, benchmarks) from its own disk, and gridrun ships none of them. Checked
    on each alive node by a zero-CPU task pinned there, before anything is recorded; a node that does not answer
    in ``timeout_s`` is skipped with a warning. A local ``tracking.storage`` folder is checked the same way: a
    file made in it here must be visible on every node (a filesystem they all mount)."""
    from gridrun import storage as store

    inputs = local_inputs(spec)
    marker = None
    if not store.is_uri(spec.tracking.storage):  # a folder: it must be the same one on every node (Tune writes
        # each trial's checkpoints on the node it runs on, and a trial moved to another node reads them back)
        folder = store.location(spec.tracking.storage)
        marker = os.path.join(folder, f".gridrun-shared-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(folder, exist_ok=True)
        with open(marker, "w"):
            pass
        inputs.append(("tracking.storage", marker))
    try:
        _check_on_nodes(inputs, timeout_s)
    finally:
        if marker is not None:
            with contextlib.suppress(OSError):
                os.remove(marker)


def _check_on_nodes(inputs: list[tuple[str, str]], timeout_s: float) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not inputs:
        return
    paths = sorted({p for _, p in inputs})

    @ray.remote(num_cpus=0, max_retries=0)
    def missing(ps: list[str]) -> list[str]:
        return [p for p in ps if not os.path.exists(p)]

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        n["NodeID"]: missing.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(paths)
        for n in nodes
    }
    # one wait for all of them: a node that does not answer costs timeout_s once, not once per node
    done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    answered = {ref.hex() for ref in done}
    lacking: dict[str, list[str]] = {}
    for n in nodes:
        ref = refs[n["NodeID"]]
        if ref.hex() in answered:
            lacking[n["NodeID"]] = ray.get(ref)
        else:
            address = n["NodeManagerAddress"]
            log.warning("Ray node %s did not say within %g s whether it has the inputs", address, timeout_s)
    for field, path in inputs:
        where = [
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes if path in lacking.get(n["NodeID"], [])
        ]
        if where and field == "tracking.storage":
            raise GridrunError(
                f"tracking.storage: {os.path.dirname(path)} is a folder {len(where)} of {len(nodes)} Ray nodes do "
                f"not share ({', '.join(where)}); trials write checkpoints on the node they run on and a trial moved "
                "to another node reads them back: use an object store (s3://...) or a filesystem every node mounts"
            )
        if where:
            raise GridrunError(
                f"{field}: {path} is not on {len(where)} of {len(nodes)} Ray nodes ({', '.join(where)}); each node "
                "reads a trial's inputs from its own disk: put it on a filesystem every node mounts at that path, "
                "or copy it to each node"
            )
