"""Trials per 80 GiB GPU of each shipped study with ``resources.gpu: auto``, by gridrun's own estimate
(``gridrun/memory.py``) on the published Qwen2.5 configs (no weights): the total, the term that decides it, and
the training side (weights, adapters, activations, loss) without the eval round.

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
from gridrun.packing import pick_fraction  # noqa: E402
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
        print(
            f"{path:42s} {out[path]['total_gib']:5.1f} GiB  {out[path]['trials_per_80gib_gpu']}/GPU  {est.breakdown()}"
        )
    (ROOT / "bench" / "results" / "memory_estimates.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
