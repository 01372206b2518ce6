"""Does a trial's start depend on the size of its data source? (issue 18, item 3)

A stand-in with T-Wix's schema (``messages``: system, user, assistant; ``subset``) is written as Parquet at two
sizes (5k and 500k rows by default; answers mostly short, a few up to 32k tokens). For each size, in fresh child
processes under one temporary gridrun cache:
  build  — the one-time tokenization into the node's Arrow cache (``load_train_set``, ``num_proc`` processes)
  trial  — a later trial (the cache built): ``qlora_sft.run`` on ~256 examples (``sample_ratio``) until its first
           optimizer step; its time from process start to that step (imports, model, data, first step) and its
           peak host RSS (``ru_maxrss``, read in the child)
and writes bench/results/data_scale.json with the large/small ratios. Goal: time to first step within 1.1x and
peak RSS within +100 MiB between the sizes.

    python bench/data_scale.py                     # 5k vs 500k rows, num_proc 2 (~10 min on 2 busy cores)
    python bench/data_scale.py --sizes 2000 20000  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import steal_s  # noqa: E402

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
]
SYSTEM = "You are a helpful assistant. Answer the question accurately and in the language of the question."


def write_standin(path: Path, n: int, seed: int = 0) -> dict[str, float]:
    """``n`` chat rows as Parquet, built column-wise with pyarrow from a pool of texts (fast at 500k rows).

    Answer lengths (in words; the tiny tokenizer makes about one to two tokens of each) are log-normal around
    60 with a cap of 32k: most rows short, about one in a thousand over 4k, a few at the cap.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sizes = np.unique(np.geomspace(4, 32_000, 200).astype(int))
    pool = pa.array([" ".join(WORDS[(j * 7 + k) % len(WORDS)] for j in range(s)) for k, s in enumerate(sizes)])
    want = np.clip(rng.lognormal(np.log(60), 1.1, n), 4, 32_000)
    want[rng.choice(n, max(3, n // 20_000), replace=False)] = 32_000  # a few rows at the cap
    answer = np.searchsorted(sizes, want).clip(0, len(sizes) - 1)
    question = np.searchsorted(sizes, np.clip(rng.lognormal(np.log(20), 0.6, n), 4, 400)).clip(0, len(sizes) - 1)
    content = pa.concat_arrays(
        [
            pa.array([SYSTEM] * n),
            pool.take(pa.array(question)),
            pool.take(pa.array(answer)),
        ]
    )
    # interleave: row i's messages are content[i], content[n + i], content[2n + i]
    order = np.stack([np.arange(n), n + np.arange(n), 2 * n + np.arange(n)], axis=1).ravel()
    content = content.take(pa.array(order))
    roles = pa.array(np.tile(np.array(["system", "user", "assistant"], dtype=object), n))
    msgs = pa.StructArray.from_arrays([content, roles], names=["content", "role"])
    messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), msgs)
    subset = pa.array(np.array(["general", "reasoning", "code"], dtype=object)[rng.integers(0, 3, n)])
    pq.write_table(pa.table({"messages": messages, "subset": subset}), path, row_group_size=10_000)
    return {"rows": n, "mib": path.stat().st_size / 2**20, "answer_words_max": float(sizes[answer].max())}


def _spec_overrides(path: Path, n: int, max_seq_len: int) -> list[str]:
    return [
        f"data.task={path}",
        "data.messages_field=messages",
        "data.template=chat",
        f"data.max_seq_len={max_seq_len}",
        f"data.sample_ratio={min(1.0, 256 / n)}",
        "data.eval_size=4",
        "train.batch_size=8",
        "train.eval_every=1",
        "evaluate.max_new_tokens=4",
        "forgetting.samples=2",
        "forgetting.seq_len=32",
    ]


BUILD = """
import json, sys, time
t0 = time.perf_counter()
from transformers import AutoTokenizer
from gridrun.builtin.tiny_model import ensure_tiny_general
from gridrun.spec import load_spec
from trainables.tokenized import load_train_set
spec = load_spec(sys.argv[1], json.loads(sys.argv[2]))
tok = AutoTokenizer.from_pretrained(ensure_tiny_general())
t1 = time.perf_counter()
ts = load_train_set(spec.data, tok, spec.train.seed, num_proc=int(sys.argv[3]))
print(json.dumps({"build_s": time.perf_counter() - t1, "examples": len(ts.dataset), **ts.metrics()}))
"""

TRIAL = """
import json, resource, sys, time
t0 = float(sys.argv[3])
from gridrun.spec import load_spec
import importlib; q = importlib.import_module("trainables.qlora_sft")  # the package re-exports a function by that name
spec = load_spec(sys.argv[1], json.loads(sys.argv[2]))
out = {}
import torch
torch.set_num_threads(max(1, int(spec.resources.cpu)))  # as qlora_sft does for a cpu=1 trial
setup = q.setup_train_data
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
def timed_setup(*a):
    t, m = time.perf_counter(), rss()
    r = setup(*a)
    out["data_setup_s"] = time.perf_counter() - t
    out["data_setup_rss_mib"] = rss() - m  # resident memory the data step added (mapped pages it touched included)
    return r
q.setup_train_data = timed_setup  # run() looks it up in the module: the data step's own share of the start
def report(m, d):
    # the report follows the first optimizer step and its eval round; the eval round's time is not the start's
    out.update(first_step_s=time.time() - t0 - m["perf/eval_s"], train_samples=m["data/train_samples"])
q.run(spec, 1.0, report, max_steps=1)
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _child(code: str, *args: str, env: dict[str, str]) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600
    )
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[5_000, 500_000], help="small and large row counts")
    ap.add_argument("--num-proc", type=int, default=2, help="processes of the one-time build")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="later trials per size (the median is compared)")
    args = ap.parse_args()

    from gridrun.builtin.tiny_model import ensure_tiny_general

    ensure_tiny_general()  # in the user cache, before the data cache is pointed elsewhere
    spec_yaml = ROOT / "search_spaces" / "forgetting.yaml"
    results: dict[str, dict[str, object]] = {}
    steal0 = steal_s()
    with tempfile.TemporaryDirectory(prefix="gridrun-bench-data-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / "models").symlink_to(ensure_tiny_general().parent)
        env = {**os.environ, "GRIDRUN_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        env["TOKENIZERS_PARALLELISM"] = "false"
        overrides = {}
        for n in args.sizes:
            t = time.perf_counter()
            src = write_standin(Path(tmp) / f"twix-{n}.parquet", n)
            src["write_s"] = time.perf_counter() - t
            overrides[n] = json.dumps(_spec_overrides(Path(tmp) / f"twix-{n}.parquet", n, args.max_seq_len))
            build = _child(BUILD, str(spec_yaml), overrides[n], str(args.num_proc), env=env)
            results[str(n)] = {"source": src, "build": build, "later_trials": []}
            print(n, json.dumps(results[str(n)]), flush=True)
        for _ in range(args.repeats):  # alternating sizes, so a change in the machine's load hits both alike
            for n in args.sizes:
                trial = _child(TRIAL, str(spec_yaml), overrides[n], repr(time.time()), env=env)
                results[str(n)]["later_trials"].append(trial)  # type: ignore[attr-defined]
                print(n, json.dumps(trial), flush=True)
    small, large = (results[str(n)] for n in args.sizes)

    def med(r: dict[str, object], k: str) -> float:
        return statistics.median(t[k] for t in r["later_trials"])  # type: ignore[attr-defined]

    summary = {
        "first_step_s": {"small": med(small, "first_step_s"), "large": med(large, "first_step_s")},
        "peak_rss_mib": {"small": med(small, "peak_rss_mib"), "large": med(large, "peak_rss_mib")},
        "data_setup_s": {"small": med(small, "data_setup_s"), "large": med(large, "data_setup_s")},
        "data_setup_rss_mib": {"small": med(small, "data_setup_rss_mib"), "large": med(large, "data_setup_rss_mib")},
    }
    ratio = summary["first_step_s"]["large"] / summary["first_step_s"]["small"]
    extra = summary["peak_rss_mib"]["large"] - summary["peak_rss_mib"]["small"]
    out = {
        "what": "later trial's time to first optimizer step and peak host RSS, small vs large T-Wix-shaped source",
        "sizes": args.sizes,
        "num_proc": args.num_proc,
        "max_seq_len": args.max_seq_len,
        "results": results,
        "summary": summary,
        "first_step_ratio": ratio,
        "peak_rss_extra_mib": extra,
        "goal": {"first_step_ratio_max": 1.1, "peak_rss_extra_mib_max": 100},
        "goal_met": ratio <= 1.1 and extra <= 100,
        "cpu_steal_s": steal_s() - steal0,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "bench_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    dest = ROOT / "bench" / "results" / "data_scale.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("summary", "first_step_ratio", "peak_rss_extra_mib", "goal_met")}))


if __name__ == "__main__":
    main()
