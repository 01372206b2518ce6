"""Peak memory and time of the training loss: full logits (``model(**batch).loss``, transformers' way) vs gridrun's
chunked loss (``gridrun.losses.causal_lm_loss``), side by side in one invocation, on CPU.

The model is Qwen2.5-0.5B-shaped where the loss is concerned (vocabulary 151936, hidden 896, tied embeddings,
float32 as nf4 trials run the head) with one decoder layer (LoRA r=8 on q/v), random weights; one sequence of
``seq`` tokens, every token scored (the worst case for the chunked loss: masked prompt tokens would skip the head).
One torch thread throughout. Memory: each (way, seq) in its own process, one forward+backward under a tensor
tracker (the peak bytes of live tensors the step allocates, any op, backward too), and the process's peak RSS
growth over it (``ru_maxrss`` less the RSS before it: it includes what BLAS allocates outside torch). Time: one
process per seq runs both ways on one model, alternating, ``--reps`` times each after a warm-up; the fastest of
each is kept (a shared machine only ever adds time). The two ways' losses are compared (they must agree to
float32 rounding). Results: bench/results/losses.json.

    python bench/losses.py                 # seq 256, 1024, 2048; ~6 minutes
    python bench/losses.py --seqs 256 512  # a quicker look
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402
from gridrun.losses import CHUNK  # noqa: E402

VOCAB, HIDDEN = 151936, 896


def _model() -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4864,
        num_hidden_layers=1,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    base = Qwen2ForCausalLM(config)
    for p in base.parameters():
        p.requires_grad_(False)
    return get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def _rss_mb() -> float:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _tensor_peak(step: Any, existing: list[Any]) -> int:
    """Peak bytes of tensors allocated during ``step()`` and alive at once (what the tests' tracker counts); views
    of the ``existing`` tensors (the weights: ``W.t()`` in a linear layer) allocate nothing."""
    import torch
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    live: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in existing}
    state = {"now": 0, "peak": 0}

    def free(key: int) -> None:
        state["now"] -= live.pop(key, 0)

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if key and key not in live and key not in skip:
                        live[key] = st.nbytes()
                        state["now"] += st.nbytes()
                        state["peak"] = max(state["peak"], state["now"])
                        weakref.finalize(st, free, key)
            return out

    with Mode():
        step()
    return state["peak"]


def _setup(seq: int) -> tuple[Any, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    model = _model()
    model.train()
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _step(model: Any, batch: dict[str, Any], way: str) -> float:
    from gridrun.losses import causal_lm_loss

    loss = model(**batch, use_cache=False).loss if way == "full" else causal_lm_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def memory(way: str, seq: int) -> dict[str, Any]:
    """One way's training step in a fresh process: its loss, tensor peak and RSS growth."""
    model, batch = _setup(seq)
    rss_before = _rss_mb()
    value: list[float] = []
    peak = _tensor_peak(lambda: value.append(_step(model, batch, way)), [*model.parameters(), *batch.values()])
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "loss": value[0],
        "tensor_peak_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round(rss_peak - rss_before, 1),
    }


def timing(seq: int, reps: int) -> dict[str, list[float]]:
    """Seconds per step of both ways on one model, alternating (full, chunked, full, ...) after a warm-up of each,
    so a neighbour's load on the machine falls on both alike."""
    model, batch = _setup(seq)
    for way in ("full", "chunked"):
        _step(model, batch, way)
    out: dict[str, list[float]] = {"full": [], "chunked": []}
    for _ in range(reps):
        for way in out:
            t0 = time.perf_counter()
            _step(model, batch, way)
            out[way].append(round(time.perf_counter() - t0, 3))
    return out


def _child(*args: str) -> Any:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory", nargs=2, metavar=("WAY", "SEQ"), help=argparse.SUPPRESS)
    parser.add_argument("--timing", type=int, metavar="SEQ", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory(args.memory[0], int(args.memory[1]))))
        return
    if args.timing:
        print(json.dumps(timing(args.timing, args.reps)))
        return
    steal0, rows = steal_s(), []
    for seq in args.seqs:
        mem = {way: _child("--memory", way, str(seq)) for way in ("full", "chunked")}
        times = _child("--timing", str(seq), "--reps", str(args.reps))
        full, chunked = mem["full"], mem["chunked"]
        best = {way: min(t) for way, t in times.items()}
        row = {
            "seq": seq,
            **{f"{w}_{k}": v for w in mem for k, v in mem[w].items() if k != "loss"},
            **{f"{w}_s_per_step": best[w] for w in best},
            **{f"{w}_s_all": times[w] for w in times},
            "loss_rel_diff": abs(full["loss"] - chunked["loss"]) / abs(full["loss"]),
            "tensor_peak_ratio_chunked_vs_full": round(chunked["tensor_peak_mb"] / full["tensor_peak_mb"], 3),
            "time_ratio_chunked_vs_full": round(best["chunked"] / best["full"], 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "device": f"cpu: {platform.machine()}",
        "threads": 1,
        "model": f"Qwen2.5-0.5B-shaped head (vocab {VOCAB}, hidden {HIDDEN}, tied), 1 layer, LoRA r=8 q/v, fp32",
        "batch": "1 sequence, every token scored",
        "chunk": CHUNK,
        "reps": args.reps,
        "rows": rows,
        "steal_s": round(steal_s() - steal0, 1),
    }
    out = ROOT / "bench" / "results" / "losses.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
