"""ExperimentSpec → Ray Tune Tuner (OptunaSearch + ASHA + stoppers + MLflow) → results; and resume.

Order matters: everything that can be checked without starting anything is checked first
(:func:`gridrun.validate.preflight`), so a bad spec, a missing file, an unreachable MLflow or Ray address, or GPUs
that are not there give one line and exit code 2 before Ray starts or an MLflow run exists.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import yaml

from forgetting import Baselines, cached_baselines, primary_metric
from gridrun import storage as store
from gridrun.builtin import builtin_name
from gridrun.errors import GridrunError
from gridrun.experiment import ExperimentMeta, MlflowIds
from gridrun.finish import fit_and_report
from gridrun.ray_start import other_local_rays, start_ray
from gridrun.sources import absolute_sources, hub_offline
from gridrun.spec import ExperimentSpec
from gridrun.validate import check_address, check_tracking_uri, gpu_memory_bytes, preflight

__all__ = ["launch", "other_local_rays", "resume", "start_ray"]

log = logging.getLogger("gridrun")


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
    from gridrun.model_config import model_config
    from gridrun.packing import resolve_gpu

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


def _baseline(spec: ExperimentSpec, trial_spec: ExperimentSpec) -> tuple[Baselines, bool]:
    """The base model's cached value of each forgetting measure; misses are computed once, in one Ray task with
    one trial's resources."""
    import ray

    from trainables.qlora_sft import compute_baselines

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=_gpu(spec))(compute_baselines)
    return cached_baselines(trial_spec, lambda s, names: ray.get(task.remote(s, names)))


def _base_arms(spec: ExperimentSpec, trial_spec: ExperimentSpec, searched: dict[str, Any]) -> list[Any]:
    """The base model's cached task scores, one per eval arm (``gridrun.base_scores.Arm``); a miss is scored as a
    Ray task with one trial's resources (as the forgetting baselines)."""
    import ray

    from gridrun.base_scores import base_task_scores, compute_base_scores

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


def _searcher(spec: ExperimentSpec, searched: dict[str, Any], warm: list[Any] | None = None) -> Any:
    """The spec's Optuna searcher; ``search.warm_start``'s trials are read here unless given (launch reads them
    before anything starts, so a bad source costs nothing)."""
    from gridrun.searcher import build_searcher
    from gridrun.warm_start import earlier_trials

    return build_searcher(spec, searched, earlier_trials(spec, searched) if warm is None else warm)


def launch(spec: ExperimentSpec, spec_yaml: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the experiment; returns the summary (also written as ``gridrun_summary.json`` in the experiment dir)."""
    spec = absolute_sources(spec)  # trials run in their own folders: a relative input path would name nothing there
    preflight(spec, resolve_hub=not hub_offline())

    import ray
    from ray import tune

    from gridrun.base_scores import baseline_entries, log_parent_base
    from gridrun.builtin import resolve_model
    from gridrun.checkpoints import CheckpointKeeper
    from gridrun.mlflow_view import view_tag
    from gridrun.progress import ProgressPrinter
    from gridrun.snapshots import SnapshotOnTrialEnd
    from gridrun.spec.space import to_optuna
    from gridrun.stopping import StoppingState, StopReasons, TimeBudget, build_stopping
    from gridrun.tracking import MLflowTracker, flatten, set_experiment_tag, start_parent_run
    from gridrun.warm_start import earlier_trials
    from gridrun.writer import SPILL_FILE

    searched, fixed = to_optuna(spec.search.space)
    trial_spec = spec.with_params(fixed)
    warm = earlier_trials(spec, searched)  # search.warm_start's trials: a bad source stops here, before any record
    exp_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = store.location(spec.tracking.storage)  # a local folder, or a URI Tune writes to itself
    store.makedirs(storage)
    exp_dir = store.join(storage, exp_name)

    total = start_ray(spec)
    try:
        spec, trial_spec = _resolve_gpu(spec, trial_spec, total)
        if builtin_name(spec.model.name):
            resolve_model(spec.model.name)  # build once here, before trials race to do it
        baseline, cached = _baseline(spec, trial_spec)
        log.warning("base model: %s (%s)", baseline.describe(), "cached" if cached else "computed once, now cached")
        arms = _base_arms(spec, trial_spec, searched)
        baseline.task.update(baseline_entries(arms))

        # the fixed settings as they are, the searched ones as their ranges: experiments compare by settings
        parent_params = {k: v for k, v in flatten(trial_spec.trial_dict()).items() if k not in searched}
        parent_params.update({f"search.{k}": d.to_yaml() for k, d in spec.search.space.items() if k in searched})
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
            params=parent_params,
        )
        log_parent_base(spec.tracking.uri, parent, arms)
        # the runs table as a user compares trials (MLflow keeps no default columns): a saved view the link opens
        metrics = ["objective", spec.objective.metric, primary_metric(spec)]
        view = view_tag(parent, f"gridrun {exp_name}", metrics, sorted(searched))
        set_experiment_tag(spec.tracking.uri, exp_id, *view)
        meta = ExperimentMeta(
            spec=spec.model_dump(mode="json"),
            trial_spec=trial_spec.trial_dict(),
            experiment=exp_name,
            mlflow=MlflowIds(spec.tracking.uri, exp_id, parent),
            baselines=baseline.to_json(),
            searched=sorted(searched),
            base_scores=[{"values": a.values, "scores": a.scores} for a in arms],
        )
        meta.write(exp_dir)
        if not quiet:
            print(f"[gridrun] experiment folder {exp_dir} (resume with: gridrun resume {exp_dir})", flush=True)

        reasons = StopReasons()  # one book for every copy Tune unpickles (its stopper comes from the snapshot)
        scheduler, stopper = build_stopping(spec, reasons)
        keeper = CheckpointKeeper(spec.checkpoint.num_to_keep)
        saver = SnapshotOnTrialEnd()
        tracker = MLflowTracker(
            spec.tracking.uri,
            exp_id,
            parent,
            trial_spec,
            sorted(searched),
            reasons,
            keeper,
            spec.tracking.log_adapters,
            spill_path=store.join(exp_dir, SPILL_FILE),
            experiment_dir=exp_dir,
        )
        callbacks: list[Any] = [
            StoppingState(scheduler, reasons),
            keeper,
            tracker,
            saver,  # before the printer: a trial's end line follows the snapshot that holds it
            ProgressPrinter(
                spec.objective.metric,
                primary_metric(spec),
                reasons,
                quiet=quiet,
                total=spec.search.num_trials,
                saver=saver,
            ),
            *_file_loggers(),
        ]
        budget = TimeBudget(spec.search.time_budget, reasons) if spec.search.time_budget else None
        if budget is not None:
            callbacks.insert(0, budget)  # first: its clock ticks before the others see a step
        tuner = tune.Tuner(
            _trainable(spec, trial_spec, baseline),
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, searched, warm),
                scheduler=scheduler,
                num_samples=spec.search.num_trials,
                max_concurrent_trials=_concurrency(spec, total),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=exp_name,
                storage_path=storage,
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
        return fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet, budget)
    finally:
        ray.shutdown()


def _add_missing_callbacks(callbacks: list[Any]) -> None:
    """What a restored experiment launched by an older gridrun lacks, appended (Tune hands saved callback states
    back by list position): Tune's CSV and JSON files, and the saver of Tune's state at trial ends, which the
    printer (before it in the list) is given: it holds a step's end lines and prints them the next step, saved."""
    from ray.tune.logger import CSVLoggerCallback

    from gridrun.progress import ProgressPrinter
    from gridrun.snapshots import SnapshotOnTrialEnd

    if not any(isinstance(c, CSVLoggerCallback) for c in callbacks):
        callbacks.extend(_file_loggers())
    if not any(isinstance(c, SnapshotOnTrialEnd) for c in callbacks):
        saver = SnapshotOnTrialEnd()
        callbacks.append(saver)
        for c in callbacks:
            if isinstance(c, ProgressPrinter) and c.saver is None:
                c.saver = saver


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

    from gridrun.stopping import TimeBudget, format_duration
    from gridrun.tracking import MLflowTracker, mark_interrupted
    from gridrun.writer import SPILL_FILE, replay_spill

    exp_dir = store.location(experiment_dir)
    store.check_storage(exp_dir, "resume")
    meta = ExperimentMeta.read(exp_dir)
    if not tune.Tuner.can_restore(exp_dir):
        raise GridrunError(f"{exp_dir} holds no Ray Tune experiment state to resume from")
    spec = meta.experiment_spec()
    spent = float(meta.time_budget.get("spent_s", 0.0))
    if spec.search.time_budget and spent >= spec.search.time_budget:
        raise GridrunError(
            f"search.time_budget: all {format_duration(spec.search.time_budget)} of {exp_dir} are spent; "
            "nothing is left to resume"
        )
    check_tracking_uri(spec.tracking.uri)
    if spec.resources.address:
        check_address(spec.resources.address)

    import ray

    start_ray(spec)
    try:
        replay_spill(store.join(exp_dir, SPILL_FILE))  # what the last driver could not write (MLflow was away) first
        # The crashed driver left runs RUNNING: mark them KILLED now; trials that continue reopen theirs.
        mark_interrupted(meta.mlflow.uri, meta.mlflow.parent_run_id)
        tuner = tune.Tuner.restore(
            exp_dir,
            trainable=_trainable(spec, meta.start_spec(), Baselines.from_json(meta.baselines)),
            resume_unfinished=True,
            resume_errored=resume_errored,
            restart_errored=restart_errored,
        )
        local = tuner._local_tuner  # private: Tuner.restore gives no public access to the restored run config
        assert local is not None, "resume runs in-process, not through Ray Client"
        callbacks = local.get_run_config().callbacks or []  # restored from the experiment state
        _add_missing_callbacks(callbacks)
        tracker = next(c for c in callbacks if isinstance(c, MLflowTracker))
        tracker.mark_resumed(store.join(exp_dir, SPILL_FILE))  # look up runs the restored state may not know of
        for c in callbacks:
            if hasattr(c, "quiet"):
                c.quiet = quiet
        budget = next((c for c in callbacks if isinstance(c, TimeBudget)), None)
        if budget is not None:  # the remainder: Tune's snapshot may know a larger spent time (set_state keeps it)
            budget.spent_s = max(budget.spent_s, spent)
        return fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet, budget)
    finally:
        ray.shutdown()


def _file_loggers() -> list[Any]:
    """Tune's per-trial result files, ``progress.csv`` and ``result.json`` (Tune's ResultGrid reads them back), and
    not its TensorBoard files: Tune adds all three itself unless told not to (``start_ray`` tells it), and importing
    tensorboardX cost every launch 1.8-3.1 s (measured on 2 busy cores) for event files nothing reads (MLflow holds
    the curves)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def _trainable(spec: ExperimentSpec, trial_spec: ExperimentSpec, baselines: Baselines) -> Any:
    from ray import tune

    from trainables.qlora_sft import qlora_sft

    return tune.with_resources(
        tune.with_parameters(qlora_sft, spec=trial_spec, baseline=baselines),
        {"cpu": spec.resources.cpu, "gpu": _gpu(spec)},
    )
