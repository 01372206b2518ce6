"""QLoRA SFT trainable: setup → train → report, one Ray Tune trial.

Reads top to bottom like a recipe. ``qlora_sft`` is what Tune runs; ``run`` is the same loop callable
directly (the benchmark and tests use it), with a ``report`` callback standing in for ``tune.report``.
Setup is three named steps (``setup_model``, ``setup_train_data``, ``setup_eval``); ``eval_round``
(:mod:`trainables.evaluation`) is the one evaluation both trials and ``evaluate_adapter`` run, so a logged adapter
re-scores to what its trial reported.

Every eval round reports the DESIGN namespaces (``train/*``, ``task/*``, ``forget/*``, ``objective``,
``samples_seen``, ``perf/*``) with a checkpoint holding adapter, optimizer, scheduler, RNG state and data
position, so a restored trial continues exactly where it stopped.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetting import Baselines, active_measures, cached_baselines
from gridrun.losses import causal_lm_loss
from gridrun.spec import ExperimentSpec
from trainables import state
from trainables.base_scores import step0_base
from trainables.data import collate, subsample
from trainables.evaluation import eval_round, setup_eval
from trainables.gpu_memory import mem_estimate, oom_error, peak_mem_mb
from trainables.model import add_lora, cap_gpu_memory, load_base, pick_device, prepare_base, quiet_hf
from trainables.precision import autocast, grad_scaler, optimizer_step, resolve, resolved_spec
from trainables.tokenized import TrainSet, examples, load_train_set

__all__ = [
    "Reporter",
    "compute_baselines",
    "evaluate_adapter",
    "lr_schedule",
    "qlora_sft",
    "run",
    "setup_model",
    "setup_train_data",
]

#: report(metrics, checkpoint_dir or None)
Reporter = Callable[[dict[str, Any], "Path | None"], None]


#: train.lr_scheduler → transformers' schedule names (warm-up first in each).
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def lr_schedule(optimizer: Any, kind: str, warmup: int, total: int) -> Any:
    """transformers' learning-rate schedule (as ``Trainer`` uses it): linear warm-up from 0 over ``warmup``
    steps, then cosine, linear or constant decay to the last of ``total`` steps."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULES[kind], optimizer, num_warmup_steps=warmup, num_training_steps=total)


# ----------------------------------------------------------------------------------------------------- setup


def setup_model(spec: ExperimentSpec) -> tuple[Any, Any, str]:
    """Base model as ``spec.model`` says, with a fresh LoRA adapter seeded by ``train.seed``: (model, tok, device)."""
    import torch

    device = pick_device(spec.resources.gpu)
    if device == "cuda":
        cap_gpu_memory(spec)  # before loading: a trial that outgrows its share fails alone
        torch.cuda.reset_peak_memory_stats()  # perf/peak_mem_mb is this trial's, not a reused worker's earlier one's
    torch.manual_seed(spec.train.seed)
    base, tok = load_base(spec.model, device)
    return add_lora(base, spec.lora, spec.model), tok, device


def setup_train_data(spec: ExperimentSpec, tok: Any) -> tuple[Any, TrainSet]:
    """The trial's training examples (a seeded ``sample_ratio`` subset) and the whole tokenized split.

    Both are Arrow datasets memory-mapped from the node's cache (columns ``input_ids``, ``labels``, ``length``);
    the subset is a list of row indices into it, so the trial holds no example it does not train on.
    """
    data = spec.data
    full = load_train_set(data, tok, spec.train.seed)
    n = len(full.dataset)
    if data.sample_ratio >= 1:
        return full.dataset, full
    return full.dataset.select(subsample(n, data.sample_ratio, spec.train.seed)), full


def compute_baselines(spec: ExperimentSpec, names: list[str]) -> Baselines:
    """The base values of the measures ``names`` on the model a trial starts from: the base model loaded and
    prepared exactly as trials do it, with a fresh adapter (LoRA's B is zero, so it computes the prepared base
    model's function). peft's k-bit preparation recasts layers (norms and embeddings to float32), so the raw base
    model is not what a trial measures: with bfloat16 compute its probe loss differed by up to 1e-3 relative."""
    import torch

    from evaluators import build_generator
    from trainables.worker import quiet_teardown

    quiet_teardown()
    quiet_hf()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    model, tok, _ = setup_model(spec)
    out = {}
    measures = [m for m in active_measures(spec) if m.name in names]
    generator = build_generator(spec) if measures else None  # the trials' backend, so base answers match theirs
    try:
        for m in measures:
            m.generator = generator
            m.setup(tok, [])
            with autocast(spec, model):  # the numerics the trials' eval rounds run in
                out[m.name] = m.compute_base(model, tok)
    finally:
        if generator is not None:
            generator.close()
    return Baselines(out)


# ----------------------------------------------------------------------------------------------------- train


def run(
    spec: ExperimentSpec,
    baseline: Baselines,
    report: Reporter,
    restore: Path | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one trial; call ``report`` every eval round. Returns the last reported metrics.

    Args:
        spec: the trial's spec (the experiment's, with this trial's sampled values substituted).
        baseline: the base model's cached value of each forgetting measure that has one.
        report: receives the metrics and a checkpoint folder (valid only during the call).
        restore: a checkpoint folder written by an earlier report, to continue from.
        max_steps: stop after this many optimizer steps (tests use it to simulate an interruption).
    """
    import torch
    from transformers import set_seed

    quiet_hf()
    tc = spec.train

    # --- setup ----------------------------------------------------------------------------------------
    model, tok, device = setup_model(spec)
    spec = resolved_spec(spec, device)  # auto compute dtype and attention kernel as they are here (the card's)
    model.train()
    encoded, full = setup_train_data(spec, tok)
    ctx = setup_eval(spec, tok, baseline)
    try:  # the generator (a vLLM engine holds GPU memory) is closed however the trial ends: finished,
        # stopped by the scheduler (Tune's report raises SystemExit), or failed; the worker may run the next trial
        ctx.baselines.task.update(step0_base(spec, model, tok, ctx))  # before a restore: scores the untrained adapter
        estimated = mem_estimate(spec, model.config.to_dict())

        n_train = len(encoded)
        per_step = tc.batch_size * tc.grad_accum
        total_samples = max(1, round(tc.epochs * n_train))
        total_steps = math.ceil(total_samples / per_step)
        warmup = int(tc.warmup_ratio * total_steps)

        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        sched = lr_schedule(opt, tc.lr_scheduler, warmup, total_steps)
        scaler = grad_scaler(spec, device)  # float16 only; a pass-through otherwise
        pos = state.Position(step=0, samples_seen=0)
        if restore is not None:
            pos = state.load(restore, model, opt, sched, scaler)
        else:
            set_seed(tc.seed)  # python, numpy, torch (and CUDA): data order and dropout

        padding_free = tc.padding_free if tc.padding_free != "auto" else device == "cuda"
        varlen = padding_free and resolve(spec.model, device).attn == "flash_attention_2"
        lengths = list(encoded["length"]) if tc.group_by_length else None
        stream = state.SampleStream(n_train, tc.seed, lengths, tc.batch_size)
        last: dict[str, Any] = {}
        losses: list[float] = []
        tokens, train_time = 0, 0.0

        # --- train ----------------------------------------------------------------------------------------
        while pos.step < total_steps and (max_steps is None or pos.step < max_steps):
            t0 = time.perf_counter()
            take = min(per_step, total_samples - pos.samples_seen)
            idx = stream.take(pos.samples_seen, take)
            step_loss = 0.0
            for m in range(0, len(idx), tc.batch_size):
                micro = idx[m : m + tc.batch_size]
                rows = examples(encoded, micro)
                batch = {
                    k: v.to(device) if hasattr(v, "to") else v
                    for k, v in collate(rows, tok, padding_free, varlen).items()
                }
                # the mean token loss of the micro-batch, the LM head a chunk of positions at a time (no KV cache);
                # under autocast the head's matmul runs in 16 bits, its log-softmax and loss in float32
                with autocast(spec, model):
                    loss = causal_lm_loss(model, batch)
                # Weight micro-batches by size so a partial last step averages like a full one. The scale multiplies
                # the loss after the chunked loss ran its head's backward: its backward multiplies the kept gradients
                # by the incoming one, so the scaled gradient reaches the head and the decoder alike.
                scaler.scale(loss * len(micro) / len(idx)).backward()
                step_loss += loss.item() * len(micro) / len(idx)
                tokens += sum(len(r["input_ids"]) for r in rows)
            # a float16 step the GradScaler skipped (inf in the scaled gradients) leaves the schedule where it is, as
            # transformers' Trainer does; its loss is finite, so it is no non-finite-loss stop
            if optimizer_step(opt, scaler, params, tc.max_grad_norm):
                sched.step()
            opt.zero_grad(set_to_none=True)
            pos.step += 1
            pos.samples_seen += len(idx)
            losses.append(step_loss)
            train_time += time.perf_counter() - t0

            # --- report -----------------------------------------------------------------------------------
            if pos.step % tc.eval_every == 0 or pos.step == total_steps or not math.isfinite(step_loss):
                t1 = time.perf_counter()
                last = {
                    "train/loss": sum(losses) / len(losses),
                    "train/lr": sched.get_last_lr()[0],
                    **eval_round(spec, model, tok, ctx),
                    "samples_seen": pos.samples_seen,
                    "step": pos.step,
                    "epoch": pos.samples_seen / n_train,
                    "data/train_samples": n_train,
                    "data/train_samples_total": len(full.dataset),
                    **full.metrics(),
                    "data/eval_samples": len(ctx.examples),
                    "progress": pos.samples_seen / total_samples,
                    "perf/tokens_per_s": tokens / train_time if train_time else 0.0,
                    "perf/peak_mem_mb": peak_mem_mb(device),
                    **estimated,
                    "perf/eval_s": time.perf_counter() - t1,
                }
                losses.clear()
                with tempfile.TemporaryDirectory(prefix="gridrun-ckpt-") as d:
                    state.save(Path(d), model, opt, sched, pos, spec, last, scaler)
                    report(last, Path(d))
                if not math.isfinite(step_loss):
                    break  # the non-finite-loss stopper ends the trial; nothing more to learn here
        return last
    finally:
        ctx.generator.close()


def qlora_sft(config: dict[str, Any], spec: ExperimentSpec, baseline: Baselines) -> None:
    """Ray Tune function trainable: ``config`` holds this trial's sampled dotted-path params.

    Sampled values are validated like written ones (``with_params``): a float for a whole-number field fails
    here, and a categorical 4.0 for ``lora.r`` becomes 4.
    """
    import logging
    import warnings

    import torch
    from ray import tune

    from trainables.worker import quiet_teardown

    quiet_teardown()  # Ray's SIGTERM at the worker's end must not print a traceback on a successful run
    for name in ("ray.train", "ray.tune"):  # "checkpoint created" lines from every report drown the terminal
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    trial_spec = spec.with_params(config)
    ckpt = tune.get_checkpoint()

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    try:
        if ckpt is not None:
            with ckpt.as_directory() as d:
                run(trial_spec, baseline, report, restore=Path(d))
        else:
            random.seed(trial_spec.train.seed)
            run(trial_spec, baseline, report)
    except torch.cuda.OutOfMemoryError as e:  # the allocator cap (cap_gpu_memory) was hit: this trial alone fails
        total = torch.cuda.get_device_properties(0).total_memory
        raise oom_error(trial_spec, str(e), total, torch.cuda.max_memory_allocated()) from None


def evaluate_adapter(
    spec: ExperimentSpec, adapter_dir: str | Path, baseline: Baselines | None = None
) -> dict[str, float]:
    """Put a saved adapter on the base model with peft and run the trial's ``eval_round`` on it.

    The same data, template, generation settings, probe and base scores as the trial, so a logged adapter
    reproduces every metric its trial reported at that checkpoint (``task/*``, ``forget/*``, ``objective``).

    Args:
        baseline: the base scores the trial used; by default the cached ones (computed here on a cache miss).
    """
    import torch

    quiet_hf()  # before peft imports bitsandbytes, which warns about optional CPU kernels on import
    from peft import PeftModel

    if baseline is None:
        baseline = cached_baselines(spec, compute_baselines)[0]
    torch.manual_seed(spec.train.seed)
    base, tok = load_base(spec.model, pick_device(spec.resources.gpu))
    # prepared as the trial's base was (float16 and float32 compute upcast a 4-bit base's norms, embeddings, head)
    model = PeftModel.from_pretrained(prepare_base(base, spec.model), str(adapter_dir))
    model.eval()
    ctx = setup_eval(spec, tok, baseline)
    try:
        with model.disable_adapter():  # the base scores, as a trial without a driver-side base scored them at step 0
            ctx.baselines.task.update(step0_base(spec, model, tok, ctx))
        return eval_round(spec, model, tok, ctx)
    finally:
        ctx.generator.close()
