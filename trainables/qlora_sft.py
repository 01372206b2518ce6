"""QLoRA SFT trainable: setup → train → report, one Ray Tune trial.

Reads top to bottom like a recipe. ``qlora_sft`` is what Tune runs; ``run`` is the same loop callable
directly (the benchmark and tests use it), with a ``report`` callback standing in for ``tune.report``.

Every eval round reports the DESIGN namespaces (``train/*``, ``task/*``, ``forget/*``, ``objective``,
``samples_seen``, ``perf/*``) with a checkpoint holding adapter, optimizer, scheduler, RNG state and data
position, so a restored trial continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridrun.errors import GridrunError
from gridrun.objective import forget_delta, penalized
from trainables import state
from trainables.data import (
    collate,
    encode_example,
    load_mc_items,
    load_probe_texts,
    load_task_data,
    probe_blocks,
    render_prompt,
    subsample,
)
from trainables.model import add_lora, load_base, pick_device, quiet_hf

__all__ = ["Reporter", "evaluate_adapter", "merge_params", "qlora_sft", "run", "validated"]

#: report(metrics, checkpoint_dir or None)
Reporter = Callable[[dict[str, Any], "Path | None"], None]


def merge_params(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The trial's spec: the experiment's fixed values with this trial's dotted-path params substituted."""
    out = json.loads(json.dumps(spec))
    for path, value in params.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # option mappings may not hold the key yet
        node[leaf] = value
    return out


def validated(trial_spec: dict[str, Any]) -> dict[str, Any]:
    """The trial's spec checked against the schema (a sampled value must be as valid as a written one), with
    values in their field's type (a categorical choice of 4.0 for a whole-number field becomes 4)."""
    from gridrun.spec import spec_from_dict

    return spec_from_dict({**trial_spec, "search": {}}, check_space=False).trial_dict()


def _lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)

    return f


def _peak_mem_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(
    spec: dict[str, Any],
    baseline: float | dict[str, float],
    report: Reporter,
    restore: Path | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one trial; call ``report`` every eval round. Returns the last reported metrics.

    Args:
        spec: the trial's spec (``ExperimentSpec.trial_dict`` with sampled values merged).
        baseline: the base model's cached probe loss for this (model, probe, seq_len), or a dict with
            ``probe_loss`` and, when ``forgetting.mc`` is set, ``mc_accuracy``.
        report: receives the metrics and a checkpoint folder (valid only during the call).
        restore: a checkpoint folder written by an earlier report, to continue from.
        max_steps: stop after this many optimizer steps (tests use it to simulate an interruption).
    """
    import torch

    from evaluators import GenerationSettings, build_evaluator, probe_loss
    from evaluators.mc import mc_accuracy

    quiet_hf()
    data, train_cfg, ev_cfg, fg = spec["data"], spec["train"], spec["evaluate"], spec["forgetting"]
    seed = int(train_cfg["seed"])

    # --- setup: model + adapter ----------------------------------------------------------------------
    device = pick_device(spec["resources"]["gpu"])
    torch.manual_seed(seed)
    base, tok = load_base(spec["model"], device)
    model = add_lora(base, spec["lora"], spec["model"]["quantization"], spec["model"]["gradient_checkpointing"])
    model.train()

    # --- setup: data ----------------------------------------------------------------------------------
    train_rows, eval_rows = load_task_data(data, seed)
    keep = subsample(len(train_rows), float(data["sample_ratio"]), seed)
    encoded = [
        encode_example(
            tok,
            render_prompt(tok, train_rows[i]["prompt"], data["template"]),
            train_rows[i]["answer"],
            data["max_seq_len"],
        )
        for i in keep
    ]
    eval_examples = [{**r, "prompt": render_prompt(tok, r["prompt"], data["template"])} for r in eval_rows]
    blocks = probe_blocks(tok, load_probe_texts(fg["probe"], fg["probe_field"]), fg["seq_len"], fg["samples"])
    base = baseline if isinstance(baseline, dict) else {"probe_loss": baseline}
    mc_items = load_mc_items(fg["mc"]) if fg.get("mc") else None
    if mc_items is not None and "mc_accuracy" not in base:
        raise GridrunError("forgetting.mc: no cached base-model accuracy was passed to the trial")
    gen = GenerationSettings(max_new_tokens=ev_cfg["max_new_tokens"], batch_size=ev_cfg["batch_size"])
    evaluators = [build_evaluator(n, gen, ev_cfg["options"].get(n)) for n in ev_cfg["evaluators"]]

    n_train = len(encoded)
    per_step = train_cfg["batch_size"] * train_cfg["grad_accum"]
    total_samples = max(1, round(train_cfg["epochs"] * n_train))
    total_steps = math.ceil(total_samples / per_step)
    warmup = int(train_cfg["warmup_ratio"] * total_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(train_cfg["lr_scheduler"], warmup, total_steps))
    pos = state.Position(step=0, samples_seen=0)
    if restore is not None:
        pos = state.load(restore, model, opt, sched)
    else:
        state.seed_all(seed)

    pad = tok.pad_token_id
    stream = state.SampleStream(n_train, seed)
    last: dict[str, Any] = {}
    losses: list[float] = []
    tokens, train_time = 0, 0.0

    # --- train ----------------------------------------------------------------------------------------
    while pos.step < total_steps and (max_steps is None or pos.step < max_steps):
        t0 = time.perf_counter()
        take = min(per_step, total_samples - pos.samples_seen)
        idx = stream.take(pos.samples_seen, take)
        step_loss = 0.0
        for m in range(0, len(idx), train_cfg["batch_size"]):
            micro = idx[m : m + train_cfg["batch_size"]]
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in micro], pad).items()}
            out = model(**batch)
            # Weight micro-batches by size so a partial last step averages like a full one.
            (out.loss * len(micro) / len(idx)).backward()
            step_loss += out.loss.item() * len(micro) / len(idx)
            tokens += int(batch["attention_mask"].sum())
        if train_cfg["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        pos.step += 1
        pos.samples_seen += len(idx)
        losses.append(step_loss)
        train_time += time.perf_counter() - t0

        if pos.step % train_cfg["eval_every"] == 0 or pos.step == total_steps or not math.isfinite(step_loss):
            t1 = time.perf_counter()
            task: dict[str, float] = {}
            for ev in evaluators:
                task.update({f"task/{k}": float(v) for k, v in ev.evaluate(model, tok, eval_examples).items()})
            weights = spec["objective"].get("weights") or {}
            if weights:
                task["task/weighted"] = sum(w * task.get(k, 0.0) for k, w in weights.items())
            probe = probe_loss(model, blocks)
            delta = forget_delta(probe, base["probe_loss"])
            forget = {"forget/probe_loss": probe, "forget/probe_loss_base": base["probe_loss"], "forget/delta": delta}
            if mc_items is not None:
                acc, acc0 = mc_accuracy(model, tok, mc_items), base["mc_accuracy"]
                forget.update(
                    {
                        "forget/mc_accuracy": acc,
                        "forget/mc_accuracy_base": acc0,
                        "forget/mc_delta": (acc0 - acc) / acc0 if acc0 > 0 else 0.0,
                    }
                )
            metric = task.get(spec["objective"]["metric"])
            if metric is None:
                raise GridrunError(
                    f"objective.metric: {spec['objective']['metric']} is not reported by "
                    f"evaluators {ev_cfg['evaluators']} (they report: {', '.join(sorted(task))})"
                )
            last = {
                "train/loss": sum(losses) / len(losses),
                "train/lr": sched.get_last_lr()[0],
                **task,
                **forget,
                "objective": penalized(metric, delta, spec["objective"]["penalty"], spec["objective"]["direction"]),
                "samples_seen": pos.samples_seen,
                "step": pos.step,
                "epoch": pos.samples_seen / n_train,
                "data/train_samples": n_train,
                "data/train_samples_total": len(train_rows),
                "data/eval_samples": len(eval_examples),
                "progress": pos.samples_seen / total_samples,
                "perf/tokens_per_s": tokens / train_time if train_time else 0.0,
                "perf/peak_mem_mb": _peak_mem_mb(device),
                "perf/eval_s": time.perf_counter() - t1,
            }
            losses.clear()
            with tempfile.TemporaryDirectory(prefix="gridrun-ckpt-") as d:
                state.save(Path(d), model, opt, sched, pos, spec, last)
                report(last, Path(d))
            if not math.isfinite(step_loss):
                break  # the non-finite-loss stopper ends the trial; nothing more to learn here
    return last


def qlora_sft(config: dict[str, Any], spec: dict[str, Any], baseline: float | dict[str, float]) -> None:
    """Ray Tune function trainable: ``config`` holds this trial's sampled dotted-path params."""
    import logging
    import warnings

    import torch
    from ray import tune

    for name in ("ray.train", "ray.tune"):  # "checkpoint created" lines from every report drown the terminal
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    threads = max(1, int(spec["resources"]["cpu"]))
    torch.set_num_threads(threads)
    trial_spec = validated(merge_params(spec, config))
    ckpt = tune.get_checkpoint()

    def report(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    if ckpt is not None:
        with ckpt.as_directory() as d:
            run(trial_spec, baseline, report, restore=Path(d))
    else:
        random.seed(int(trial_spec["train"]["seed"]))
        run(trial_spec, baseline, report)


def evaluate_adapter(spec: dict[str, Any], adapter_dir: str | Path) -> dict[str, float]:
    """Load the base model as the spec says, put a saved adapter on it with peft, run evaluators and probe.

    The same data, template and generation settings as the trial, so a logged adapter reproduces the task
    metrics its trial reported.
    """
    import torch

    quiet_hf()  # before peft imports bitsandbytes, which warns about optional CPU kernels on import
    from peft import PeftModel

    from evaluators import GenerationSettings, build_evaluator, probe_loss

    torch.manual_seed(int(spec["train"]["seed"]))
    base, tok = load_base(spec["model"], pick_device(spec["resources"]["gpu"]))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    data, ev_cfg = spec["data"], spec["evaluate"]
    _, eval_rows = load_task_data(data, int(spec["train"]["seed"]))
    examples = [{**r, "prompt": render_prompt(tok, r["prompt"], data["template"])} for r in eval_rows]
    gen = GenerationSettings(max_new_tokens=ev_cfg["max_new_tokens"], batch_size=ev_cfg["batch_size"])
    out: dict[str, float] = {}
    for name in ev_cfg["evaluators"]:
        ev = build_evaluator(name, gen, ev_cfg["options"].get(name))
        out.update({f"task/{k}": float(v) for k, v in ev.evaluate(model, tok, examples).items()})
    fg = spec["forgetting"]
    blocks = probe_blocks(tok, load_probe_texts(fg["probe"], fg["probe_field"]), fg["seq_len"], fg["samples"])
    out["forget/probe_loss"] = probe_loss(model, blocks)
    return out
