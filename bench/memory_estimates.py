"""Trials per 80 GiB GPU of each shipped study with ``resources.gpu: auto``, by gridrun's own estimate
(``gridrun/memory.py``) on the published Qwen2.5 configs (no weights): the total, the term that decides it, and
the training side (weights, adapters, activations, loss) without the eval round; and with ``evaluate.backend:
vllm``, the engine's part (``gridrun/vllm_memory.py``), the trials per GPU for training plus engine, and the
``gpu_memory_utilization`` the engine gets on that GPU.

    python bench/memory_estimates.py
Writes bench/results/memory_estimates.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gridrun.memory import GiB, estimate_memory  # noqa: E402
from gridrun.packing import pick_fraction, trial_need  # noqa: E402
from gridrun.spec import load_spec  # noqa: E402
from tests.gridrun_tests.test_memory import QWEN_05B, QWEN_7B  # noqa: E402  # the published configs, written once

STUDIES = {
    "qwen2.5-0.5b-instruct/forgetting.yaml": QWEN_05B,
    "qwen2.5-0.5b-instruct/gsm8k.yaml": QWEN_05B,
    "qwen2.5-0.5b-instruct/json_format.yaml": QWEN_05B,
    "qwen2.5-coder-0.5b-instruct/code.yaml": QWEN_05B,
    "qwen2.5-7b-instruct/squad.yaml": QWEN_7B,
}


def main() -> None:
    out = {}
    for path, config in STUDIES.items():
        spec = load_spec(ROOT / "search_spaces" / path).with_params({"resources.gpu": "auto"})
        est = estimate_memory(config, spec)
        static = est.weights + est.float_weights + est.lora + est.optimizer
        out[path] = {
            "total_gib": round(est.total / GiB, 2),
            "trials_per_80gib_gpu": round(1 / pick_fraction(est.total, 80 * GiB)),
            "largest": "train" if est.train >= est.eval else f"eval ({est.eval_kind})",
            "train_side_gib": round((static + est.train + est.context) / GiB, 2),
            "activations_gib": round(est.activations / GiB, 2),
            "breakdown": est.breakdown(),
        }
        train, engine = trial_need(config, spec.with_params({"evaluate.backend": "vllm"}))
        assert engine is not None
        need = train.total + engine.total
        out[path]["vllm"] = {
            "total_gib": round(need / GiB, 2),
            "engine_gib": round(engine.total / GiB, 2),
            "trials_per_80gib_gpu": round(1 / pick_fraction(need, 80 * GiB)),
            "engine_gpu_memory_utilization": engine.utilization(80 * GiB),
            "engine_breakdown": engine.breakdown(),
        }
        print(
            f"{path:42s} {out[path]['total_gib']:5.1f} GiB  {out[path]['trials_per_80gib_gpu']}/GPU  {est.breakdown()}"
        )
        v = out[path]["vllm"]
        print(
            f"{'  + backend: vllm':42s} {v['total_gib']:5.1f} GiB  {v['trials_per_80gib_gpu']}/GPU  engine "
            f"{v['engine_gib']} GiB, utilization {v['engine_gpu_memory_utilization']} ({engine.breakdown()})"
        )
    (ROOT / "bench" / "results" / "memory_estimates.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
