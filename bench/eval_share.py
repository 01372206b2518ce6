"""The demo trial's eval share, before and after the HF backend's dequantized generation, side by side.

The demo trial (search_spaces/forgetting.yaml at the centre of its search space, as bench/throughput.py runs it)
is run whole, interleaved, with the HF generator as it was (bitsandbytes dequantizing every 4-bit weight at every
token, peft's LoRA forward: ``HFGenerator(dequantize_on_cpu=False)``) and as it is now (weights dequantized once
per trial, LoRA computed op for op without peft's per-call work, for the whole eval round: generation, probe).
Eval share = the seconds of its eval rounds (``perf/eval_s`` summed) over the trial's wall time, and the same in
CPU seconds (``cpu_share``: on a shared machine wall time also counts the neighbours' load); every reported
task/forget/objective value must be equal between the two (the script fails otherwise). One torch thread (a
cpu=1 trial). Results: bench/results/eval_share.json.

Where an eval round's CPU seconds go (``breakdown``, summed over the trial's rounds, from hooks on the decoder):
the prompts' prefill (and how many of its tokens are left padding), the decode steps, the scoring forwards (the
probe), and the rest (generate's own loop, the LM heads, tokenizing, the metrics).

    python bench/eval_share.py            # 3 interleaved repeats, ~3 minutes
    python bench/eval_share.py --reps 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402

DEMO = ROOT / "search_spaces" / "forgetting.yaml"
#: What differs run to run by nature (wall-clock, memory) and is left out of the equality check.
_VARYING = ("perf/", "task/latency_s")
_KEYS = ("wall_s", "eval_s", "share", "cpu_s", "eval_cpu_s", "cpu_share")


class _Breakdown:
    """CPU seconds of an eval round's decoder forwards by kind, from forward hooks on the decoder (rounds only)."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(_PARTS, 0.0)
        self.in_round = self.in_generate = False
        self._start = 0.0
        self._kind = ""

    def hook(self, model) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
        decoder = inner.get_decoder()
        decoder.register_forward_pre_hook(self._pre, with_kwargs=True)
        decoder.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        if not self.in_round or ids is None:
            self._kind = ""
            return
        if ids.shape[1] == 1:
            self._kind = "decode"
        elif self.in_generate:
            self._kind = "prefill"
            mask = kwargs.get("attention_mask")
            self.sums["prefill_tokens"] += ids.numel()
            self.sums["prefill_pad_tokens"] += 0 if mask is None else int((mask == 0).sum())
        else:
            self._kind = "scoring"
        self._start = time.process_time()

    def _post(self, module, args, output) -> None:
        if self._kind:
            self.sums[f"{self._kind}_cpu_s"] += time.process_time() - self._start
            self.sums[f"{self._kind}_forwards"] += 1


_PARTS = (
    "prefill_cpu_s",
    "prefill_forwards",
    "prefill_tokens",
    "prefill_pad_tokens",
    "decode_cpu_s",
    "decode_forwards",
    "scoring_cpu_s",
    "scoring_forwards",
)


def _trial(dequantize: bool, baseline_fn) -> dict:
    import importlib

    import evaluators
    from evaluators import HFGenerator
    from gridrun.spec import load_spec

    spec = load_spec(DEMO).with_params({"train.lr": 1e-3, "lora.r": 8, "data.sample_ratio": 0.6})
    baseline = baseline_fn(spec)
    trainable = importlib.import_module("trainables.qlora_sft")  # the module (the package exports its function)
    real_build, real_round, real_setup = evaluators.build_generator, trainable.eval_round, trainable.setup_model
    cpu_in_eval = [0.0]
    parts = _Breakdown()

    def timed_round(*args, **kwargs):  # CPU seconds too: on a shared machine wall time measures the neighbours
        c0 = time.process_time()
        parts.in_round = True
        try:
            return real_round(*args, **kwargs)
        finally:
            parts.in_round = False
            cpu_in_eval[0] += time.process_time() - c0

    def build(s):
        gen = HFGenerator(dequantize_on_cpu=dequantize)
        real_generate = gen.generate

        def generate(*args, **kwargs):
            parts.in_generate = True
            try:
                return real_generate(*args, **kwargs)
            finally:
                parts.in_generate = False

        gen.generate = generate  # type: ignore[method-assign]
        return gen

    def setup(s):
        model, tok, device = real_setup(s)
        parts.hook(model)
        return model, tok, device

    evaluators.build_generator = build  # type: ignore[assignment]
    trainable.eval_round, trainable.setup_model = timed_round, setup  # type: ignore[assignment]
    reports: list[dict] = []
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        trainable.run(spec, baseline, lambda m, d: reports.append(m))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        evaluators.build_generator, trainable.eval_round, trainable.setup_model = real_build, real_round, real_setup
    eval_s = sum(m["perf/eval_s"] for m in reports)
    breakdown = dict(parts.sums)
    breakdown["other_cpu_s"] = cpu_in_eval[0] - sum(breakdown[f"{k}_cpu_s"] for k in ("prefill", "decode", "scoring"))
    values = [{k: v for k, v in m.items() if not k.startswith(_VARYING)} for m in reports]
    return {
        "wall_s": wall,
        "eval_s": eval_s,
        "share": eval_s / wall,
        "cpu_s": cpu,
        "eval_cpu_s": cpu_in_eval[0],
        "cpu_share": cpu_in_eval[0] / cpu,
        "values": values,
        "breakdown": breakdown,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    def baseline_fn(s):
        return cached_baselines(s, compute_baselines)[0]

    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.reps):  # interleaved, so a busy spell of the machine hits both alike
        runs["before"].append(_trial(False, baseline_fn))
        runs["after"].append(_trial(True, baseline_fn))
    reference = runs["before"][0]["values"]
    for name, rs in runs.items():
        for r in rs:
            if r["values"] != reference:
                raise SystemExit(f"{name}: the trial's reported metrics differ from the old generation's")
    med = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in _KEYS} for name, rs in runs.items()}
    result = {
        "device": f"cpu: {platform.processor() or platform.machine()}",
        "threads": 1,
        "repeats": args.reps,
        "eval_rounds": len(reference),
        "median": med,
        "all": {name: [{k: round(r[k], 3) for k in _KEYS} for r in rs] for name, rs in runs.items()},
        "eval_speedup": round(med["before"]["eval_s"] / med["after"]["eval_s"], 3),
        "eval_cpu_speedup": round(med["before"]["eval_cpu_s"] / med["after"]["eval_cpu_s"], 3),
        # summed over the trial's eval rounds, median over repeats: seconds, forwards and prefill tokens
        "breakdown": {
            name: {k: round(statistics.median(r["breakdown"][k] for r in rs), 3) for k in rs[0]["breakdown"]}
            for name, rs in runs.items()
        },
        "metrics_identical": True,
        "final": {k: reference[-1][k] for k in ("task/format_success", "forget/probe_loss", "objective")},
        "steal_s": round(steal_s() - steal0, 1),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "eval_share.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
