"""Every check that starts nothing (no Ray, no MLflow run): one line and exit code 2 on failure.

``check_spec`` is what ``gridrun validate`` runs: names, evaluators and their options, the objective's metric,
data files and builtin generator options (at both ends of any searched range), the template, the model folder,
the train/test answer format, a trial's estimated GPU memory against its share (``gridrun.memory``), and a
storage URI's scheme. ``preflight`` (``validate --deep`` and every launch) adds reachability: the tracking store,
the storage bucket, the Ray cluster address, GPUs. Imports no Ray and no torch at module top.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gridrun.builtin import builtin_name, check_names
from gridrun.errors import GridrunError
from gridrun.precision import check_attn_implementation
from gridrun.sources import check_hub_cache, hub_offline, input_sources, is_hub_id, resolve_hub_ids
from gridrun.spec import ExperimentSpec
from gridrun.storage import check_reachable, check_storage
from gridrun.tracking_uri import absolute_uri, check_store_exists, check_tracking_uri

__all__ = [
    "absolute_uri",
    "check_address",
    "check_answer_formats",
    "check_lora_targets",
    "check_memory",
    "check_spec",
    "check_store_exists",
    "check_tracking_uri",
    "gpu_memory_bytes",
    "preflight",
]


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
    from evaluators import EVALUATORS

    wanted = {n: EVALUATORS[n].answer_formats for n in spec.evaluate.evaluators if EVALUATORS[n].answer_formats}
    if not wanted:
        return
    src = spec.data.task
    local = builtin_name(src) is not None or Path(src).expanduser().exists()  # a file or a dataset folder
    if not (local or load_hub):
        return
    from trainables.data import load_task_data

    train, _ = load_task_data(
        spec.data.model_copy(update={"train_size": min(spec.data.train_size, 256)}), spec.train.seed
    )
    targets = [str(r["answer"]) for r in train[:256]]
    for name, formats in wanted.items():
        if not any(re.search(f, t) for f in formats for t in targets):
            raise GridrunError(
                f"evaluate.evaluators: {name} reads answers written as {' or '.join(repr(f) for f in formats)}, but "
                f"none of the {len(targets)} training targets of {src} contains one: the model would learn an answer "
                "format the evaluator cannot read (train/test format mismatch); fix the targets or the evaluator"
            )


def check_spec(spec: ExperimentSpec) -> list[str]:
    """What can be checked offline, starting nothing: names, evaluators and their options, the objective's
    metric, local files and folders, builtin generator options (at both ends of any searched range), the
    template, LoRA target modules of a builtin or local model, and the train/test answer format.

    Returns:
        the hub ids (models and datasets) that were not checked offline; ``preflight`` resolves them.
    """
    from evaluators import EVALUATORS, GenerationSettings, build_evaluator, check_backend, check_evaluator_names
    from forgetting import check_measures

    if spec.search.warm_start:  # the earlier study's folder and summary (a run id is MLflow's to answer)
        from gridrun.warm_start import check_source

        check_source(spec.search.warm_start)
    check_measures(spec)
    mc_custom = next((m.source for m in spec.forgetting.mc if m.benchmark == "custom"), None)
    check_names(spec.model.name, spec.data.task, spec.forgetting.probe, spec.data.eval, mc_custom)
    check_evaluator_names(spec.evaluate.evaluators)
    check_backend(spec)  # vLLM installed (found, not imported: validate stays fast), a GPU, a quantization it does
    if spec.evaluate.backend == "vllm":  # every rank a trial may train, not only the first trial's
        from gridrun.vllm_memory import lora_rank_cap

        searched = spec.search.space.get("lora.r")
        lora_rank_cap(max([spec.lora.r, *(int(v) for _, v in (searched.extremes() if searched else []))]))
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
    unchecked: list[str] = []
    for src in input_sources(spec):
        if builtin_name(src.source) is not None:
            continue
        p = Path(src.source).expanduser()
        if p.exists():
            if src.kind == "model" and not p.is_dir():
                raise GridrunError(f"{src.field}: model folder not found: {p} is a file")
            continue
        if p.suffix in (".jsonl", ".json", ".parquet", ".txt") or src.source.startswith((".", "/", "~")):
            what = "model folder" if src.kind == "model" else "data file"
            raise GridrunError(f"{src.field}: {what} not found: {p}")
        unchecked.append(src.source)
    if builtin_name(spec.data.task) or Path(spec.data.task).expanduser().exists():
        from trainables.data import load_task_data

        # fields, emptiness, JSON syntax of files; a few records of a builtin task under every option variant
        for options in _option_variants(spec, "data.options.", spec.data.options):
            small = {"train_size": min(spec.data.train_size, 8), "eval_size": min(spec.data.eval_size, 2)}
            load_task_data(spec.data.model_copy(update={**small, "options": options}), spec.train.seed)
    if builtin_name(spec.model.name) or Path(spec.model.name).expanduser().is_dir():
        check_lora_targets(spec)
    if spec.model.quantization != "none" and spec.resources.gpu == 0 and spec.model.compute_dtype == "float16":
        raise GridrunError("model.compute_dtype: float16 4/8-bit matmuls need a GPU; use float32 on CPU")
    check_attn_implementation(spec.model, "cpu" if spec.resources.gpu == 0 else None)
    check_answer_formats(spec)
    check_memory(spec)
    check_tracking_uri(spec.tracking.uri, reach=False)  # scheme, form and local folder: no server needed
    check_storage(spec.tracking.storage)
    return sorted(set(unchecked))


def _option_variants(spec: ExperimentSpec, prefix: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """``options`` as written, then with each searched ``<prefix><key>`` at each end of its range."""
    variants = [dict(options)]
    for path, dist in spec.search.space.items():
        if path.startswith(prefix):
            key = path[len(prefix) :]
            variants += [{**options, key: value} for _, value in dist.extremes()]
    return variants


def preflight(spec: ExperimentSpec, resolve_hub: bool = True) -> None:
    """Everything ``check_spec`` checks, then reachability: hub ids (models and datasets at their revisions, and
    a hub model's LoRA targets), the tracking store, the cluster address, GPUs and a trial's memory on one.

    Args:
        resolve_hub: check hub ids against the hub. Where the hub is switched off (``HF_HUB_OFFLINE=1``) launch
            trusts the local cache instead; ``gridrun validate --deep`` always asks, and fails if it cannot.
    """
    unchecked = check_spec(spec)
    if unchecked and not resolve_hub and hub_offline():
        check_hub_cache(spec)  # the launch trusts the local cache: the model must be in it
    if unchecked and resolve_hub:
        resolve_hub_ids(spec)
        if is_hub_id(spec.model.name):
            check_lora_targets(spec)  # reads the model's config from the hub, no weights
    check_tracking_uri(spec.tracking.uri)
    check_reachable(spec.tracking.storage)
    gpu = spec.resources.gpu
    if spec.resources.address:
        check_address(spec.resources.address)
    elif gpu != "auto" and gpu > 0:
        have = _local_gpus()
        if have == 0:
            raise GridrunError(
                f"resources.gpu: {spec.resources.gpu} GPU per trial requested, but this machine "
                "has no CUDA GPU (set resources.gpu: 0, or pass --address of a GPU cluster)"
            )
        if gpu > have:
            raise GridrunError(f"resources.gpu: {gpu} GPUs per trial requested, this machine has {have}")
    check_memory(spec, deep=True, hub=resolve_hub)


def check_address(address: str) -> None:
    """Fail fast (one line) when a Ray cluster address is malformed or nothing answers there."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        # under Ray Client, Tune runs its controller, and so gridrun's callbacks, in a task on the head node: the
        # driver's tracker, checkpoint keeper and summary would never see a result
        raise GridrunError(
            f"resources.address: {address} is a Ray Client address, which gridrun does not support (Tune would run "
            "its MLflow, checkpoint and summary callbacks on the head, not here); run gridrun on a node of the "
            "cluster and give the head's host:port (e.g. 10.0.0.5:6379)"
        )
    parsed = urlparse(f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port or "://" in address:
        raise GridrunError(
            f"resources.address: expected host:port (the head's GCS, e.g. 10.0.0.5:6379), got {address!r}"
        )
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as e:
        raise GridrunError(f"resources.address: Ray cluster at {address} is unreachable ({e.strerror or e})") from None


#: The shape of every builtin model's architecture: a Qwen2. Module names, not sizes, matter to the LoRA check.
_BUILTIN_ARCH = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "vocab_size": 64,
}


def check_lora_targets(spec: ExperimentSpec) -> None:
    """Refuse ``lora.target_modules`` the model does not have, from its architecture alone: the model is built
    from its config on the meta device (no weights read or allocated), as peft would look its modules up."""
    model_type, names, linear = _architecture_modules(spec)
    missing = [t for t in spec.lora.target_modules if t not in names]
    if missing:
        raise GridrunError(
            f"lora.target_modules: {', '.join(missing)} not in {spec.model.name} "
            f"({model_type}); its linear layers are: {', '.join(linear)}"
        )


def _architecture_modules(spec: ExperimentSpec) -> tuple[str, set[str], list[str]]:
    """``(model_type, module names, linear layer names)`` of the spec's model (last parts of the dotted names).

    Building even a meta-device model costs seconds of imports and class set-up at every launch, so the names
    are cached by the config's content and the transformers version (builtin and local configs are read as
    JSON: no transformers import on a cache hit)."""
    import hashlib
    import json
    from importlib.metadata import version

    from gridrun.cache import cache_get, cache_put

    local = Path(spec.model.name).expanduser() / "config.json"
    config_json: dict[str, Any] | None = None
    if builtin_name(spec.model.name):
        config_json = _BUILTIN_ARCH
    elif local.is_file():
        try:
            config_json = json.loads(local.read_text())
        except (OSError, ValueError):
            config_json = None  # AutoConfig below says what is wrong with it
    config = None
    if config_json is None:  # a hub model (validate --deep) or an unreadable folder: transformers reads it
        config = _auto_config(spec)
        config_json = config.to_dict()
    key_text = json.dumps({"transformers": version("transformers"), "config": config_json}, sort_keys=True, default=str)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    hit = cache_get("architectures", key)
    if hit is not None:
        return hit["model_type"], set(hit["names"]), hit["linear"]

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainables.model import quiet_hf

    quiet_hf()
    if config is None and config_json is _BUILTIN_ARCH:
        config = AutoConfig.for_model(**_BUILTIN_ARCH)
    elif config is None:
        config = _auto_config(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules()})
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    entry = {"model": spec.model.name, "model_type": config.model_type, "names": names, "linear": linear}
    cache_put("architectures", key, entry)
    return config.model_type, set(names), linear


def _auto_config(spec: ExperimentSpec) -> Any:
    from transformers import AutoConfig

    from trainables.model import quiet_hf

    quiet_hf()
    try:
        return AutoConfig.from_pretrained(str(Path(spec.model.name).expanduser()), revision=spec.model.revision)
    except (OSError, ValueError) as e:
        raise GridrunError(
            f"model.name: cannot read the config of {spec.model.name!r}: {str(e).splitlines()[0]}"
        ) from None


def gpu_memory_bytes(spec: ExperimentSpec, local: bool = False) -> int | None:
    """One GPU's memory: ``resources.gpu_memory_gb`` where set, else (``local``, no cluster address) the
    smallest of this machine's GPUs, else None."""
    if spec.resources.gpu_memory_gb:
        return int(spec.resources.gpu_memory_gb * 2**30)
    if local and not spec.resources.address and _local_gpus() > 0:
        return _local_gpu_memory()
    return None


@functools.lru_cache(maxsize=1)
def _local_gpu_memory() -> int | None:
    # in a child process: a CUDA context made here would stay in the driver, on the GPU its trials share
    code = (
        "import torch; n = torch.cuda.device_count(); "
        "print(min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) if n else 0)"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.split()[-1]) or None
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def check_memory(spec: ExperimentSpec, deep: bool = False, hub: bool = False) -> str | None:
    """Refuse a ``resources.gpu`` share that a trial's estimated peak memory does not fit (one line with both
    numbers; with ``evaluate.backend: vllm`` the training's and the engine's parts, and the share needed), or a
    ``gpu: auto`` model that no whole GPU holds; the estimate as a line to print, or None when
    trials run on CPU or the model's config cannot be read (a hub model offline, unless cached).

    Args:
        deep: also ask this machine's GPU for its size (``resources.gpu_memory_gb`` otherwise).
        hub: read a hub model's config from the hub (else from the local cache only).
    """
    from gridrun.memory import gib
    from gridrun.model_config import model_config
    from gridrun.packing import check_fraction, describe_need, pick_fraction, trial_need

    gpu = spec.resources.gpu
    if gpu == 0:
        return None
    config = model_config(spec, hub=hub)
    if config is None:
        return None
    est, engine = trial_need(config, spec)  # with evaluate.backend vllm, the engine's part beside the training's
    needed = est.total + (engine.total if engine is not None else 0)
    if engine is None:
        needs = f"a trial needs about {gib(est.total)} GiB of GPU memory ({est.breakdown()})"
    else:
        needs = f"a trial needs {describe_need(est, engine)}"
    gpu_bytes = gpu_memory_bytes(spec, local=deep)
    if not gpu_bytes:
        return f"memory: {needs}; set resources.gpu_memory_gb to check it against a GPU"
    if gpu == "auto":
        share = pick_fraction(needed, gpu_bytes)
        return f"memory: {needs}; gpu: auto takes {share:g} of a {gib(gpu_bytes)} GiB GPU"
    check_fraction(gpu, gpu_bytes, est, engine)
    return f"memory: {needs}; gpu: {gpu:g} of a {gib(gpu_bytes)} GiB GPU is {gib(min(gpu, 1) * gpu_bytes)} GiB"
