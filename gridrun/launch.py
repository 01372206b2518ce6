"""ExperimentSpec → Ray Tune Tuner (OptunaSearch + ASHA + stoppers + MLflow) → results; and resume.

Order matters: everything that can be checked without starting anything is checked first
(:func:`gridrun.validate.preflight`), so a bad spec, a missing file, an unreachable MLflow or Ray address, or GPUs
that are not there give one line and exit code 2 before Ray starts or an MLflow run exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from gridrun.base_scores import Arm, base_task_scores, baseline_entries, compute_base_scores, log_parent_base
from gridrun.builtin import builtin_name
from gridrun.errors import GridrunError
from gridrun.finish import fit_and_report
from gridrun.sources import hub_offline
from gridrun.spec import ExperimentSpec, spec_from_dict, validate_dict
from gridrun.validate import check_address, check_tracking_uri, gpu_memory_bytes, preflight

__all__ = ["META_FILE", "experiment_trial_spec", "launch", "resume", "start_ray"]

#: What `gridrun resume` needs besides Tune's own state: the spec, the cached baseline, the MLflow ids.
META_FILE = "gridrun_experiment.json"

log = logging.getLogger("gridrun")


def experiment_trial_spec(meta: dict[str, Any]) -> ExperimentSpec:
    """The spec every trial of an experiment starts from (fixed search values substituted), from its META_FILE."""
    return validate_dict(meta["trial_spec"])


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
    # Ray turns token authentication on for a local cluster (good) and says so at every start (noise).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.resources.address:
        ray.init(address=spec.resources.address, log_to_driver=True, logging_level=logging.WARNING)
    else:
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
    return total


def _gpu(spec: ExperimentSpec) -> float:
    """``resources.gpu`` as a number (launch resolves ``auto`` before anything reads it; unresolved, it is 0)."""
    gpu = spec.resources.gpu
    return 0.0 if gpu == "auto" else gpu


def _cluster_gpu_memory() -> int | None:
    """One GPU's memory, asked of a GPU node by a tiny task (its worker exits, CUDA context and all)."""
    import ray

    @ray.remote(num_gpus=0.01, num_cpus=0, max_calls=1)
    def total_memory() -> int:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)

    ref = total_memory.remote()
    try:
        return int(ray.get(ref, timeout=120))
    except Exception:  # no GPU free in time, or no torch with CUDA there: auto asks for gpu_memory_gb instead
        ray.cancel(ref, force=True)
        return None


def _resolve_gpu(
    spec: ExperimentSpec, trial_spec: ExperimentSpec, total: dict[str, float]
) -> tuple[ExperimentSpec, ExperimentSpec]:
    """``resources.gpu: auto`` → a fraction from the estimate and the GPU's size (0 without GPUs); an explicit
    fraction checked against them. The resolved spec is what the trials, the baseline and resume get."""
    from gridrun.packing import model_config, resolve_gpu

    gpus = float(total.get("GPU", 0))
    if gpus <= 0 and spec.resources.gpu != "auto":
        return spec, trial_spec
    config = model_config(spec, hub=not hub_offline())
    gpu_bytes = gpu_memory_bytes(spec, local=True)
    if gpu_bytes is None and gpus > 0 and spec.resources.address:
        gpu_bytes = _cluster_gpu_memory()
    gpu, line = resolve_gpu(spec, config, gpu_bytes, gpus)
    if line:
        log.warning("%s", line)
    if gpu == spec.resources.gpu:
        return spec, trial_spec
    return spec.with_params({"resources.gpu": gpu}), trial_spec.with_params({"resources.gpu": gpu})


def _concurrency(spec: ExperimentSpec, total: dict[str, float]) -> int:
    if spec.search.max_concurrent:
        return spec.search.max_concurrent
    slots = math.floor(float(total.get("CPU", 1)) / spec.resources.cpu)
    if _gpu(spec) > 0:
        slots = min(slots, math.floor(float(total.get("GPU", 0)) / _gpu(spec) + 1e-9))
    return max(1, min(slots, spec.search.num_trials))


def _baseline(spec: ExperimentSpec, trial_spec: ExperimentSpec) -> tuple[dict[str, float], bool]:
    """Cached base-model probe loss (and ``mc/<benchmark>`` accuracies); a miss is computed once, as a Ray task
    with one trial's resources."""
    import ray

    from gridrun.baseline import cached_baseline, compute_baseline, compute_mc_baseline

    def remote(fn: Any) -> Any:
        task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=_gpu(spec))(fn)
        return lambda s: ray.get(task.remote(s))

    probe, cached = cached_baseline(trial_spec, remote(compute_baseline))
    out = {"probe_loss": float(probe)}
    if spec.forgetting.mc:
        accs, mc_cached = cached_baseline(trial_spec, remote(compute_mc_baseline), kind="mc")
        out.update({f"mc/{name}": float(acc) for name, acc in accs.items()})
        cached = cached and mc_cached
    return out, cached


def _base_arms(spec: ExperimentSpec, trial_spec: ExperimentSpec, searched: dict[str, Any]) -> list[Arm]:
    """The base model's cached task scores, one per eval arm; a miss is scored as a Ray task with one trial's
    resources (as the probe baseline)."""
    import ray

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=_gpu(spec))(compute_base_scores)
    arms = base_task_scores(trial_spec, searched, lambda s: ray.get(task.remote(s)))
    for a in arms:
        label = ", ".join(f"{k}={v}" for k, v in a.values.items())
        log.warning(
            "base model task scores%s: %s (%s)",
            f" ({label})" if label else "",
            ", ".join(f"{k} {v:.4f}" for k, v in sorted(a.scores.items())),
            "cached" if a.cached else "computed once, now cached",
        )
    return arms


def _searcher(spec: ExperimentSpec, searched: dict[str, Any]) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    if not searched:
        return None  # nothing to search: every trial runs the fixed config (repeats differ only if seeds do)
    if s.sampler == "random":
        sampler: Any = optuna.samplers.RandomSampler(seed=s.seed)
    elif s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True, constant_liar=True
        )
    if spec.objective.mode == "pareto":
        return OptunaSearch(
            space=searched,
            metric=[spec.objective.metric, "forget/delta"],
            mode=[spec.objective.direction, "min"],
            sampler=sampler,
        )
    return OptunaSearch(space=searched, metric="objective", mode="max", sampler=sampler)


def launch(spec: ExperimentSpec, spec_yaml: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the experiment; returns the summary (also written as ``gridrun_summary.json`` in the experiment dir)."""
    preflight(spec, resolve_hub=not hub_offline())

    import ray
    from ray import tune

    from gridrun.builtin import resolve_model
    from gridrun.checkpoints import CheckpointKeeper
    from gridrun.progress import ProgressPrinter
    from gridrun.spec.space import to_optuna
    from gridrun.stopping import build_stopping
    from gridrun.tracking import MLflowTracker, start_parent_run
    from gridrun.writer import SPILL_FILE

    searched, fixed = to_optuna(spec.search.space)
    trial_spec = spec.with_params(fixed)
    exp_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(spec.tracking.storage).expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)
    exp_dir = storage / exp_name

    total = start_ray(spec)
    try:
        spec, trial_spec = _resolve_gpu(spec, trial_spec, total)
        if builtin_name(spec.model.name):
            resolve_model(spec.model.name)  # build once here, before trials race to do it
        baseline, cached = _baseline(spec, trial_spec)
        base_loss = baseline["probe_loss"]
        log.warning(
            "base model: %s (%s)",
            ", ".join(f"{k} {v:.4f}" for k, v in baseline.items()),
            "cached" if cached else "computed once, now cached",
        )
        arms = _base_arms(spec, trial_spec, searched)
        baseline.update(baseline_entries(arms))

        exp_id, parent = start_parent_run(
            spec.tracking.uri,
            spec.tracking.experiment or spec.name,
            exp_name,
            spec_yaml or yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False),
            {
                "gridrun.experiment_dir": str(exp_dir),
                "gridrun.objective": spec.objective.metric,
                "mlflow.note.content": spec.description,
            },
        )
        log_parent_base(spec.tracking.uri, parent, arms)
        meta = {
            "spec": spec.model_dump(mode="json"),
            "trial_spec": trial_spec.trial_dict(),
            "base_probe_loss": base_loss,
            "baseline": baseline,
            "base_scores": [{"values": a.values, "scores": a.scores} for a in arms],
            "searched": sorted(searched),
            "experiment": exp_name,
            "mlflow": {"uri": spec.tracking.uri, "experiment_id": exp_id, "parent_run_id": parent},
        }
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        if not quiet:
            print(f"[gridrun] experiment folder {exp_dir} (resume with: gridrun resume {exp_dir})", flush=True)

        reasons: dict[str, str] = {}
        scheduler, stopper = build_stopping(spec, reasons)
        keeper = CheckpointKeeper(spec.checkpoint.num_to_keep)
        tracker = MLflowTracker(
            spec.tracking.uri,
            exp_id,
            parent,
            trial_spec,
            sorted(searched),
            reasons,
            keeper,
            spec.tracking.log_adapters,
            spill_path=exp_dir / SPILL_FILE,
        )
        callbacks: list[Any] = [
            keeper,
            tracker,
            ProgressPrinter(spec.objective.metric, reasons, quiet=quiet, total=spec.search.num_trials),
        ]
        tuner = tune.Tuner(
            _trainable(spec, trial_spec, baseline),
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, searched),
                scheduler=scheduler,
                num_samples=spec.search.num_trials,
                max_concurrent_trials=_concurrency(spec, total),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=exp_name,
                storage_path=str(storage),
                stop=stopper,
                callbacks=callbacks,
                # Tune keeps every checkpoint; the CheckpointKeeper deletes those no experiment snapshot can name,
                # keeping the best by objective (the adapter worth shipping) and the latest (to resume from).
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None,
                    checkpoint_score_attribute="objective",
                    checkpoint_score_order="max",
                ),
                # a trial whose worker or node dies is retried from its last checkpoint, in the same MLflow run
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                verbose=0,
            ),
        )
        return fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet)
    finally:
        ray.shutdown()


def resume(
    experiment_dir: str | Path, resume_errored: bool = False, restart_errored: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Continue an interrupted experiment: unfinished trials from their last checkpoint, the same MLflow runs.

    Args:
        experiment_dir: the folder ``gridrun launch`` printed (``<storage>/<name>-<stamp>``).
        resume_errored: continue errored trials from their last checkpoint.
        restart_errored: rerun errored trials from scratch.
    """
    from ray import tune

    from gridrun.tracking import MLflowTracker, mark_interrupted
    from gridrun.writer import SPILL_FILE, replay_spill

    exp_dir = Path(experiment_dir).expanduser().resolve()
    meta_file = exp_dir / META_FILE
    if not meta_file.is_file():
        raise GridrunError(f"{exp_dir} is not a gridrun experiment folder (no {META_FILE})")
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise GridrunError(f"{exp_dir} holds no Ray Tune experiment state to resume from")
    meta = json.loads(meta_file.read_text())
    spec = spec_from_dict(meta["spec"])
    check_tracking_uri(spec.tracking.uri)
    if spec.resources.address:
        check_address(spec.resources.address)

    import ray

    start_ray(spec)
    try:
        ml = meta["mlflow"]
        replay_spill(exp_dir / SPILL_FILE)  # what the last driver could not write (MLflow was away) first
        # The crashed driver left runs RUNNING: mark them KILLED now; trials that continue reopen theirs.
        mark_interrupted(ml["uri"], ml["parent_run_id"])
        tuner = tune.Tuner.restore(
            str(exp_dir),
            trainable=_trainable(spec, experiment_trial_spec(meta), meta.get("baseline") or meta["base_probe_loss"]),
            resume_unfinished=True,
            resume_errored=resume_errored,
            restart_errored=restart_errored,
        )
        local = tuner._local_tuner  # private: Tuner.restore gives no public access to the restored run config
        assert local is not None, "resume runs in-process, not through Ray Client"
        callbacks = local.get_run_config().callbacks or []  # restored from the experiment state
        tracker = next(c for c in callbacks if isinstance(c, MLflowTracker))
        tracker.mark_resumed(exp_dir / SPILL_FILE)  # look up runs the restored state may not know of
        for c in callbacks:
            if hasattr(c, "quiet"):
                c.quiet = quiet
        return fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet)
    finally:
        ray.shutdown()


def _trainable(spec: ExperimentSpec, trial_spec: ExperimentSpec, base_loss: float | dict[str, float]) -> Any:
    from ray import tune

    from trainables.qlora_sft import qlora_sft

    return tune.with_resources(
        tune.with_parameters(qlora_sft, spec=trial_spec, baseline=base_loss),
        {"cpu": spec.resources.cpu, "gpu": _gpu(spec)},
    )
