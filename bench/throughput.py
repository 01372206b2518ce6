"""Training throughput of gridrun's trainable vs a plain HF Trainer + peft, and the demo's eval share.

Side by side in one invocation, one torch thread each (what a cpu=1 trial gets):
  gridrun — ``trainables.qlora_sft.run`` on the demo spec with gridrun's default settings (builtin tiny model,
            nf4, LoRA on every projection, length-grouped batches), one eval round at the very end (not timed:
            perf/tokens_per_s counts training time only); also ``ungrouped`` (train.group_by_length=false, the
            default before) and ``padding_free`` (ungrouped, packed rows)
  trainer — ``transformers.Trainer`` on the same prepared model (the same setup function), the same encoded
            examples, batch size, learning rate, schedule and number of optimizer steps, padding by
            DataCollatorForSeq2Seq, no evaluation, no checkpoints, no logging: with its default sampler, and
            ``trainer_grouped`` with its length-grouped one (train_sampling_strategy="group_by_length"), the
            like-for-like comparison of the grouped default
All train the same number of examples; tokens/s = tokens trained / training seconds. Then the demo trial itself
(its shipped spec, the centre of its search space) is run and its eval share is measured: the seconds of its eval rounds
(perf/eval_s summed) over the trial's wall time. Results: bench/results/throughput.json.

    python bench/throughput.py            # ~3 minutes
    python bench/throughput.py --quick    # smaller, for a look
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402

DEMO = ROOT / "search_spaces" / "forgetting.yaml"


def _spec(train_size: int, padding_free: bool | str = "auto", group_by_length: bool | None = None):
    """The demo spec sized for the benchmark; ``group_by_length`` None keeps gridrun's default."""
    from gridrun.spec import load_spec

    overrides = [
        f"data.train_size={train_size}",
        "train.epochs=1",
        "train.eval_every=100000",
        "train.warmup_ratio=0",
        f"train.padding_free={str(padding_free).lower()}",
    ]
    if group_by_length is not None:
        overrides.append(f"train.group_by_length={str(group_by_length).lower()}")
    return load_spec(DEMO, overrides)


def _gridrun(spec, baseline) -> dict:
    from trainables.qlora_sft import run

    t0 = time.perf_counter()
    last = run(spec, baseline, lambda m, d: None)
    return {"tokens_per_s": last["perf/tokens_per_s"], "wall_s": time.perf_counter() - t0, "steps": last["step"]}


def _trainer(spec, steps: int, grouped: bool = False) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from trainables.qlora_sft import setup_model, setup_train_data

    model, tok, _ = setup_model(spec)
    encoded, _ = setup_train_data(spec, tok)
    tok.padding_side = "right"
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="gridrun-bench-trainer-"),
        per_device_train_batch_size=spec.train.batch_size,
        learning_rate=spec.train.lr,
        lr_scheduler_type=spec.train.lr_scheduler,
        max_steps=steps,
        max_grad_norm=spec.train.max_grad_norm,
        weight_decay=spec.train.weight_decay,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=spec.train.seed,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    trainer = Trainer(model=model, args=args, train_dataset=encoded, data_collator=collator)
    out = trainer.train()
    tokens = sum(encoded.select(range(min(len(encoded), steps * spec.train.batch_size)))["length"])  # 1 epoch: all
    return {"tokens_per_s": tokens / out.metrics["train_runtime"], "wall_s": out.metrics["train_runtime"]}


def _demo_eval_share(baseline_fn) -> dict:
    from gridrun.spec import load_spec
    from trainables.qlora_sft import run

    spec = load_spec(DEMO).with_params({"train.lr": 1e-3, "lora.r": 8, "data.sample_ratio": 0.6})
    reports: list[dict] = []
    t0 = time.perf_counter()
    run(spec, baseline_fn(spec), lambda m, d: reports.append(m))
    wall = time.perf_counter() - t0
    eval_s = sum(m["perf/eval_s"] for m in reports)
    return {
        "wall_s": round(wall, 2),
        "eval_s": round(eval_s, 2),
        "eval_share": round(eval_s / wall, 3),
        "eval_rounds": len(reports),
        "final": {k: reports[-1][k] for k in ("task/format_success", "forget/probe_loss", "objective")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 examples instead of 1024, once, no demo trial")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repeats of each variant (medians reported)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from forgetting import cached_baselines
    from trainables.model import quiet_hf
    from trainables.qlora_sft import compute_baselines

    quiet_hf()
    torch.set_num_threads(1)
    steal0 = steal_s()
    size = 256 if args.quick else 1024
    reps = 1 if args.quick else args.reps
    spec = _spec(size)
    baseline = cached_baselines(spec, compute_baselines)[0]
    variants = ("gridrun", "trainer", "ungrouped", "padding_free", "trainer_grouped")
    runs: dict[str, list[float]] = {k: [] for k in variants}
    steps = 0
    for _ in range(reps):  # interleaved, so a busy spell of the machine hits every variant alike
        ours = _gridrun(spec, baseline)
        steps = ours["steps"]
        runs["gridrun"].append(ours["tokens_per_s"])
        runs["trainer"].append(_trainer(spec, steps)["tokens_per_s"])
        runs["ungrouped"].append(_gridrun(_spec(size, group_by_length=False), baseline)["tokens_per_s"])
        padded_free = _spec(size, padding_free=True, group_by_length=False)
        runs["padding_free"].append(_gridrun(padded_free, baseline)["tokens_per_s"])
        runs["trainer_grouped"].append(_trainer(spec, steps, grouped=True)["tokens_per_s"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "device": f"cpu: {platform.processor() or platform.machine()}",
        "threads": 1,
        "train_examples": size,
        "steps": steps,
        "repeats": reps,
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "defaults": {"train.group_by_length": spec.train.group_by_length, "train.padding_free": "auto (off on CPU)"},
        "ratio_gridrun_vs_trainer": round(med["gridrun"] / med["trainer"], 3),
        "ratio_gridrun_vs_trainer_grouped": round(med["gridrun"] / med["trainer_grouped"], 3),
        "ratio_ungrouped_vs_trainer": round(med["ungrouped"] / med["trainer"], 3),
        "ratio_padding_free_vs_padded": round(med["padding_free"] / med["ungrouped"], 3),
        "steal_s": round(steal_s() - steal0, 1),
    }
    if not args.quick:
        result["demo_trial"] = _demo_eval_share(lambda s: cached_baselines(s, compute_baselines)[0])
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / ("throughput_quick.json" if args.quick else "throughput.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
