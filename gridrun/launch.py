"""ExperimentSpec → Ray Tune Tuner (OptunaSearch + ASHA + stoppers + MLflow) → results.

Order matters: everything that can be checked without starting anything is checked first (``preflight``),
so a bad spec, a missing file, an unreachable MLflow or Ray address, or GPUs that are not there give one line
and exit code 2 before Ray starts or an MLflow run exists.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from gridrun.builtin import builtin_name, check_names
from gridrun.checks import check_address as _check_address
from gridrun.checks import check_tracking_uri
from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec

__all__ = ["META_FILE", "check_answer_formats", "check_spec", "launch", "preflight", "resume"]

#: What `gridrun resume` needs besides Tune's own state: the spec, the cached baseline, the MLflow ids.
META_FILE = "gridrun_experiment.json"

log = logging.getLogger("gridrun")


def _local_gpus() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_answer_formats(spec: ExperimentSpec, load_hub: bool = False) -> None:
    """Refuse a spec whose evaluator reads an answer format that none of the training targets show.

    The GSM8K study lost 40% -> 5% accuracy this way: trained on ``#### n`` targets, tested with a prompt asking
    for ``\\boxed{n}``. Builtin and local data are checked always; hub datasets only when ``load_hub``.
    """
    import re

    from evaluators import EVALUATORS

    wanted = {n: EVALUATORS[n].answer_formats for n in spec.evaluate.evaluators if EVALUATORS[n].answer_formats}
    if not wanted:
        return
    src = spec.data.task
    local = builtin_name(src) is not None or Path(src).expanduser().exists()  # a file or a dataset folder
    if not (local or load_hub):
        return
    from trainables.data import load_task_data

    train, _ = load_task_data({**spec.data.model_dump(), "train_size": min(spec.data.train_size, 256)}, spec.train.seed)
    targets = [str(r["answer"]) for r in train[:256]]
    for name, formats in wanted.items():
        if not any(re.search(f, t) for f in formats for t in targets):
            raise GridrunError(
                f"evaluate.evaluators: {name} reads answers written as {' or '.join(repr(f) for f in formats)}, but "
                f"none of the {len(targets)} training targets of {src} contains one: the model would learn an answer "
                "format the evaluator cannot read (train/test format mismatch); fix the targets or the evaluator"
            )


def check_spec(spec: ExperimentSpec) -> None:
    """What can be checked offline, starting nothing: names, evaluators and their options, the objective's
    metric, data files and builtin generator options (at both ends of any searched range), the template, the
    model folder, and the train/test answer format."""
    from evaluators import EVALUATORS, GenerationSettings, build_evaluator, check_evaluator_names

    check_names(spec.model.name, spec.data.task, spec.forgetting.probe, spec.data.eval, spec.forgetting.mc)
    check_evaluator_names(spec.evaluate.evaluators)
    unknown_opts = set(spec.evaluate.options) - set(spec.evaluate.evaluators)
    if unknown_opts:
        raise GridrunError(
            f"evaluate.options: '{sorted(unknown_opts)[0]}' is not one of the evaluators run "
            f"({', '.join(spec.evaluate.evaluators)})"
        )
    gen = GenerationSettings(max_new_tokens=spec.evaluate.max_new_tokens, batch_size=spec.evaluate.batch_size)
    for name in spec.evaluate.evaluators:  # unknown option names and bad values, as the trials would meet them
        for options in _option_variants(spec, f"evaluate.options.{name}.", spec.evaluate.options.get(name) or {}):
            build_evaluator(name, gen, options)
    reported = {f"task/{m}" for n in spec.evaluate.evaluators for m in EVALUATORS[n].metrics}
    for key in spec.objective.weights:
        if key not in reported:
            raise GridrunError(
                f"objective.weights: {key} is not reported by evaluators "
                f"{', '.join(spec.evaluate.evaluators)}; they report: {', '.join(sorted(reported))}"
            )
    if spec.objective.weights:
        reported.add("task/weighted")
    if spec.objective.metric not in reported:
        raise GridrunError(
            f"objective.metric: {spec.objective.metric} is not reported by evaluators "
            f"{', '.join(spec.evaluate.evaluators)}; they report: {', '.join(sorted(reported))}"
        )
    for field, source in (
        ("data.task", spec.data.task),
        ("data.eval", spec.data.eval),
        ("forgetting.probe", spec.forgetting.probe),
        ("forgetting.mc", spec.forgetting.mc),
    ):
        if source and builtin_name(source) is None:
            p = Path(source).expanduser()
            looks_local = p.suffix in (".jsonl", ".json", ".parquet", ".txt") or source.startswith((".", "/", "~"))
            if looks_local and not (p.is_file() or (p.is_dir() and field in ("data.task", "data.eval"))):
                raise GridrunError(f"{field}: data file not found: {p}")
    if builtin_name(spec.data.task) or Path(spec.data.task).expanduser().exists():
        from trainables.data import load_task_data

        # fields, emptiness, JSON syntax of files; a few records of a builtin task under every option variant
        for options in _option_variants(spec, "data.options.", spec.data.options):
            small = {"train_size": min(spec.data.train_size, 8), "eval_size": min(spec.data.eval_size, 2)}
            load_task_data({**spec.data.model_dump(), **small, "options": options}, spec.train.seed)
    if builtin_name(spec.model.name) is None:
        p = Path(spec.model.name).expanduser()
        if spec.model.name.startswith((".", "/", "~")) and not p.is_dir():
            raise GridrunError(f"model.name: model folder not found: {p}")
    if spec.model.quantization != "none" and spec.resources.gpu == 0 and spec.model.compute_dtype == "float16":
        raise GridrunError("model.compute_dtype: float16 4/8-bit matmuls need a GPU; use float32 on CPU")
    check_answer_formats(spec)


def _option_variants(spec: ExperimentSpec, prefix: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """``options`` as written, then with each searched ``<prefix><key>`` at each end of its range."""
    variants = [dict(options)]
    for path, dist in spec.search.space.items():
        if path.startswith(prefix):
            key = path[len(prefix) :]
            variants += [{**options, key: value} for _, value in dist.extremes()]
    return variants


def preflight(spec: ExperimentSpec) -> None:
    """Everything ``check_spec`` checks, then reachability: the tracking store, the cluster address, GPUs."""
    check_spec(spec)
    check_tracking_uri(spec.tracking.uri)
    if spec.resources.address:
        _check_address(spec.resources.address)
    elif spec.resources.gpu > 0:
        have = _local_gpus()
        if have == 0:
            raise GridrunError(
                f"resources.gpu: {spec.resources.gpu} GPU per trial requested, but this machine "
                "has no CUDA GPU (set resources.gpu: 0, or pass --address of a GPU cluster)"
            )
        if spec.resources.gpu > have:
            raise GridrunError(f"resources.gpu: {spec.resources.gpu} GPUs per trial requested, this machine has {have}")


def _start_ray(spec: ExperimentSpec) -> dict[str, float]:
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
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    if spec.resources.gpu > 0 and gpus < spec.resources.gpu:
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


def _concurrency(spec: ExperimentSpec, total: dict[str, float]) -> int:
    if spec.search.max_concurrent:
        return spec.search.max_concurrent
    slots = math.floor(float(total.get("CPU", 1)) / spec.resources.cpu)
    if spec.resources.gpu > 0:
        slots = min(slots, math.floor(float(total.get("GPU", 0)) / spec.resources.gpu + 1e-9))
    return max(1, min(slots, spec.search.num_trials))


def _baseline(spec: ExperimentSpec, trial_spec: dict[str, Any]) -> tuple[dict[str, float], bool]:
    """Cached base-model probe loss (and multiple-choice accuracy); a miss is computed once, as a Ray task with
    one trial's resources."""
    import ray

    from gridrun.baseline import cached_baseline, compute_baseline, compute_mc_baseline

    def remote(fn: Any) -> Any:
        task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)(fn)
        return lambda s: float(ray.get(task.remote(s)))

    probe, cached = cached_baseline(trial_spec, remote(compute_baseline))
    out = {"probe_loss": probe}
    if spec.forgetting.mc:
        out["mc_accuracy"], mc_cached = cached_baseline(trial_spec, remote(compute_mc_baseline), kind="mc")
        cached = cached and mc_cached
    return out, cached


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
    preflight(spec)

    import ray
    from ray import tune
    from ray.tune.stopper import CombinedStopper

    from gridrun.builtin import resolve_model
    from gridrun.checkpoints import CheckpointKeeper
    from gridrun.space import to_optuna
    from gridrun.stopping import ForgettingBudget, NonFiniteLoss, RecordingASHA
    from gridrun.tracking import MLflowTracker, ProgressPrinter, start_parent_run
    from trainables.qlora_sft import merge_params

    searched, fixed = to_optuna(spec.search.space)
    trial_spec = merge_params(spec.trial_dict(), fixed)
    exp_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(spec.tracking.storage).expanduser().resolve()
    storage.mkdir(parents=True, exist_ok=True)
    exp_dir = storage / exp_name

    total = _start_ray(spec)
    try:
        if builtin_name(spec.model.name):
            resolve_model(spec.model.name)  # build once here, before trials race to do it
        baseline, cached = _baseline(spec, trial_spec)
        base_loss = baseline["probe_loss"]
        log.warning(
            "base model: %s (%s)",
            ", ".join(f"{k} {v:.4f}" for k, v in baseline.items()),
            "cached" if cached else "computed once, now cached",
        )

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
        meta = {
            "spec": spec.model_dump(mode="json"),
            "trial_spec": trial_spec,
            "base_probe_loss": base_loss,
            "baseline": baseline,
            "searched": sorted(searched),
            "experiment": exp_name,
            "mlflow": {"uri": spec.tracking.uri, "experiment_id": exp_id, "parent_run_id": parent},
        }
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        if not quiet:
            print(f"[gridrun] experiment folder {exp_dir} (resume with: gridrun resume {exp_dir})", flush=True)

        reasons: dict[str, str] = {}
        stoppers: list[Any] = [NonFiniteLoss(reasons)]
        if spec.forgetting.budget is not None:
            stoppers.append(ForgettingBudget(spec.forgetting.budget, spec.forgetting.patience, reasons))
        scheduler = None
        # ASHA stops any trial at max_t: it must be the most a trial can see, searched epochs and sizes included
        max_t = max(1, round(_largest(spec, "train.epochs", spec.train.epochs) * _train_size_upper(spec)))
        if spec.scheduler.type == "asha":
            scheduler = RecordingASHA(
                reasons,
                time_attr="samples_seen",
                metric="objective",
                mode="max",
                max_t=max_t,
                grace_period=min(spec.scheduler.grace_period, max_t),
                reduction_factor=spec.scheduler.reduction_factor,
                brackets=spec.scheduler.brackets,
            )
        keeper = CheckpointKeeper(spec.checkpoint.num_to_keep)
        tracker = MLflowTracker(
            spec.tracking.uri, exp_id, parent, trial_spec, sorted(searched), reasons, keeper, spec.tracking.log_adapters
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
                stop=CombinedStopper(*stoppers),
                callbacks=callbacks,
                # Tune keeps every checkpoint; the CheckpointKeeper deletes those no experiment snapshot can name,
                # keeping the best by objective (the adapter worth shipping) and the latest (to resume from).
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None,
                    checkpoint_score_attribute="objective",
                    checkpoint_score_order="max",
                ),
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=0,
            ),
        )
        return _fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet)
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

    from gridrun.spec import spec_from_dict
    from gridrun.tracking import MLflowTracker, mark_interrupted

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
        _check_address(spec.resources.address)

    import ray

    _start_ray(spec)
    try:
        ml = meta["mlflow"]
        # The crashed driver left runs RUNNING: mark them KILLED now; trials that continue reopen theirs.
        mark_interrupted(ml["uri"], ml["parent_run_id"])
        tuner = tune.Tuner.restore(
            str(exp_dir),
            trainable=_trainable(spec, meta["trial_spec"], meta.get("baseline") or meta["base_probe_loss"]),
            resume_unfinished=True,
            resume_errored=resume_errored,
            restart_errored=restart_errored,
        )
        local = tuner._local_tuner  # private: Tuner.restore gives no public access to the restored run config
        assert local is not None, "resume runs in-process, not through Ray Client"
        callbacks = local.get_run_config().callbacks or []  # restored from the experiment state
        tracker = next(c for c in callbacks if isinstance(c, MLflowTracker))
        tracker._resumed = True  # look up runs the restored state may not know of
        for c in callbacks:
            if hasattr(c, "quiet"):
                c.quiet = quiet
        return _fit_and_report(spec, tuner, tracker, meta, exp_dir, quiet)
    finally:
        ray.shutdown()


def _trainable(spec: ExperimentSpec, trial_spec: dict[str, Any], base_loss: float | dict[str, float]) -> Any:
    from ray import tune

    from trainables.qlora_sft import qlora_sft

    return tune.with_resources(
        tune.with_parameters(qlora_sft, spec=trial_spec, baseline=base_loss),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )


def _fit_and_report(
    spec: ExperimentSpec, tuner: Any, tracker: Any, meta: dict[str, Any], exp_dir: Path, quiet: bool
) -> dict[str, Any]:
    from gridrun.report import format_summary, importance, summarize, write_report
    from gridrun.tracking import drop_orphans, register_adapters

    parent = meta["mlflow"]["parent_run_id"]
    t0 = time.time()
    try:
        grid = tuner.fit()
    except BaseException:
        _close_parent(spec, parent, "KILLED")
        raise
    summary = summarize(spec, grid, tracker.reasons, tracker.runs, meta["base_probe_loss"], tracker.keeper.best)
    if tracker._resumed:
        dropped = drop_orphans(spec.tracking.uri, parent, {r["trial_id"] for r in summary["trials"]})
        if dropped:
            log.warning("removed %d MLflow runs of trials lost with the interrupted driver", len(dropped))
    summary.update(
        {
            "experiment": meta["experiment"],
            "experiment_dir": str(exp_dir),
            "mlflow": meta["mlflow"],
            "wall_s": round(time.time() - t0, 1),
        }
    )
    summary["importance"] = importance(summary, spec.search.space)
    summary["report_dir"] = str(exp_dir / "report")
    # Register what is worth shipping: the best trial, or every Pareto-optimal trial in pareto mode.
    if spec.tracking.log_adapters and summary.get("best"):
        ids = set(summary["pareto_front"]) if spec.objective.mode == "pareto" else {summary["best"]["trial_id"]}
        rows = [r for r in summary["trials"] if r["trial_id"] in ids]
        name = spec.tracking.experiment or spec.name
        try:
            summary["registered"] = {"name": name, "versions": register_adapters(spec.tracking.uri, name, rows)}
        except Exception as e:  # the experiment's record matters more than the registry entry
            log.warning("could not register adapters in MLflow: %s", e)
    (exp_dir / "gridrun_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_report(summary, exp_dir / "report", tracking_uri=spec.tracking.uri, parent_run_id=parent)
    _finish_parent(spec, parent, summary)
    if not quiet:
        print(format_summary(summary))
    return summary


def _largest(spec: ExperimentSpec, path: str, fixed: float) -> float:
    """The largest value ``path`` takes in any trial: its fixed value, or the top of its searched range."""
    dist = spec.search.space.get(path)
    if dist is None:
        return fixed
    values = [v for _, v in dist.extremes() if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(values, default=fixed)


def _train_size_upper(spec: ExperimentSpec) -> int:
    """Training-set size before sample_ratio (the upper end of samples a trial can see per epoch)."""
    if builtin_name(spec.data.task):
        return int(_largest(spec, "data.train_size", spec.data.train_size))
    from trainables.data import load_task_data

    train, _ = load_task_data(spec.data.model_dump(), spec.train.seed)
    return len(train)


def _close_parent(spec: ExperimentSpec, parent: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(spec.tracking.uri).set_terminated(parent, status)
    except Exception as e:  # the original error matters more than this one
        log.warning("could not mark MLflow run %s %s: %s", parent, status, e)


def _finish_parent(spec: ExperimentSpec, parent: str, summary: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(spec.tracking.uri)
    best = summary.get("best") or {}
    for k, v in (best.get("metrics") or {}).items():
        if isinstance(v, int | float):
            client.log_metric(parent, f"best/{k}", float(v))
    client.log_text(parent, json.dumps(summary, indent=2, default=str), "summary.json")
    client.set_tag(parent, "gridrun.best_trial", str(best.get("trial_id")))
    client.set_terminated(parent, "FINISHED")
