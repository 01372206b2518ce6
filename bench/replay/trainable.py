"""The replay trainable: a config's recorded learning curve, reported the way ``trainables.qlora_sft`` reports it.

``bench/replay/table.csv`` (written by ``record.py``) holds every eval round of the demo study over a grid. A
trial's config is validated through ``spec.with_params`` exactly as the QLoRA trainable does it, then snapped to
the nearest recorded grid point (learning rate on the log scale, rank on the log scale, sample ratio linearly) and
that curve's rows are reported in order, with the keys the real trainable reports (``objective``,
``samples_seen``, ``progress``, ``train/loss``, ``task/*``, ``forget/*``, ``data/*``), so the real searcher, ASHA,
forgetting budget and non-finite-loss stopper decide as they would on the real run — in milliseconds per trial.

    from bench.replay.trainable import load_table, replay_trainable
    tuner = tune.Tuner(replay_trainable(spec, load_table()), ...)

``replay_trainable`` has the signature of ``gridrun.launch._trainable`` once the table is bound, so a test can
swap it in (``monkeypatch.setattr(gridrun.launch, "_trainable", lambda s, t, b: replay_trainable(s, table,
trial_spec=t, checkpoints=True, axis="spec"))``) and drive the whole launch (MLflow, checkpoint keeper) at scale:
``checkpoints=True`` makes each round save a stand-in checkpoint (position, adapter config, card) and a restored
trial continue after it; ``axis="spec"`` puts the curve on the eval rounds of whatever spec the test runs.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "TABLE",
    "GridKey",
    "Table",
    "load_table",
    "nearest",
    "on_spec_axis",
    "replay",
    "replay_trainable",
    "reported",
]

TABLE = Path(__file__).resolve().parent / "table.csv"
#: The grid coordinates of a recorded curve: (train.lr, lora.r, data.sample_ratio).
GridKey = tuple[float, int, float]
#: Grid key → the curve's rows (one dict per eval round, in order).
Table = dict[GridKey, list[dict[str, float]]]
#: Columns that are grid coordinates or bookkeeping, not metrics the trainable reports.
_NOT_REPORTED = {"train.lr", "lora.r", "data.sample_ratio", "round", "wall_s"}


def load_table(path: str | Path = TABLE) -> Table:
    """The recorded curves, keyed by grid point, rows in eval-round order."""
    table: Table = {}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            key = (float(row["train.lr"]), int(row["lora.r"]), float(row["data.sample_ratio"]))
            table.setdefault(key, []).append({k: float(v) for k, v in row.items() if v != ""})
    for rows in table.values():
        rows.sort(key=lambda r: r["round"])
    return table


def nearest(keys: Any, lr: float, r: int, ratio: float) -> GridKey:
    """The recorded grid point nearest a config: each coordinate snapped on its own axis (lr and rank on the log
    scale, sample ratio linearly), so a grid point is always its own nearest."""
    keys = list(keys)

    def snap(values: set[float], x: float, log: bool) -> float:
        return min(sorted(values), key=lambda v: abs(math.log(v / x)) if log else abs(v - x))

    key = (
        snap({k[0] for k in keys}, lr, log=True),
        int(snap({k[1] for k in keys}, r, log=True)),
        snap({k[2] for k in keys}, ratio, log=False),
    )
    if key not in keys:
        raise KeyError(f"the table is not a full grid: no curve for {key}")
    return key


def reported(row: dict[str, float]) -> dict[str, Any]:
    """A table row as the QLoRA trainable reports it: its metrics, counts as integers."""
    out: dict[str, Any] = {k: v for k, v in row.items() if k not in _NOT_REPORTED}
    for k in ("samples_seen", "step", "data/train_samples", "data/train_samples_total", "data/eval_samples"):
        if k in out:
            out[k] = int(out[k])
    return out


def on_spec_axis(rows: list[dict[str, float]], spec: Any) -> list[dict[str, float]]:
    """The curve re-sampled at the eval rounds ``spec`` itself gives (its training size, epochs and eval spacing),
    linearly in progress; for a spec other than the recorded one (a load test with more, shorter trials)."""
    n = max(1, round(spec.data.train_size * spec.data.sample_ratio))
    total = max(1, round(spec.train.epochs * n))
    per_step = spec.train.batch_size * spec.train.grad_accum
    every = spec.train.eval_every * per_step
    out = []
    for seen in [*range(every, total, every), total]:
        p = seen / total
        after = next((r for r in rows if r["progress"] >= p), rows[-1])
        before = next((r for r in reversed(rows) if r["progress"] <= p), rows[0])
        span = after["progress"] - before["progress"]
        w = (p - before["progress"]) / span if span > 0 else 0.0
        row = {k: before[k] + w * (after[k] - before[k]) for k in before if k in after}
        out.append({**row, "samples_seen": seen, "progress": p, "step": math.ceil(seen / per_step)})
        out[-1].update({"data/train_samples": n, "epoch": seen / n})
    return out


def replay(
    config: dict[str, Any],
    spec: Any,
    table: Table,
    delay_s: float = 0.0,
    checkpoints: bool = False,
    axis: str = "recorded",
) -> None:
    """Ray Tune function trainable: report the recorded curve nearest ``config``, one result per eval round.

    Args:
        config: the trial's sampled dotted-path values (as Tune hands them to ``qlora_sft``).
        spec: the trial spec (the experiment's with fixed search values substituted).
        table: :func:`load_table`'s curves.
        delay_s: seconds slept per 32 samples of a round, before reporting it: trials then finish in the order
            their compute says (a short-ratio trial ends first), as real trials do.
        checkpoints: report a stand-in checkpoint every round, and continue after a restored one.
        axis: ``recorded`` reports the grid point's own rounds (its samples are the compute the config costs);
            ``spec`` re-samples them at the trial spec's rounds (:func:`on_spec_axis`).
    """
    import logging

    from ray import tune

    for name in ("ray.train", "ray.tune"):  # as qlora_sft does: no "checkpoint created" line per round
        logging.getLogger(name).setLevel(logging.WARNING)
    s = spec.with_params(config)  # validated like a real trial's values (a float rank fails, 4.0 becomes 4)
    key = nearest(table, s.train.lr, s.lora.r, s.data.sample_ratio)
    done = 0
    restored = tune.get_checkpoint() if checkpoints else None
    if restored is not None:
        with restored.as_directory() as d:
            done = json.loads((Path(d) / "position.json").read_text())["samples_seen"]
    rows = table[key] if axis == "recorded" else on_spec_axis(table[key], s)
    prev = 0
    for row in rows:
        metrics = {
            **reported(row),
            "replay/lr": key[0],
            "replay/r": key[1],
            "replay/sample_ratio": key[2],
            "replay/wall_s": row.get("wall_s", 0.0),
        }
        seen = metrics["samples_seen"]
        if seen <= done:
            prev = seen
            continue
        if delay_s:
            time.sleep(delay_s * (seen - prev) / 32)
        prev = seen
        if not checkpoints:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="gridrun-replay-") as d:
            (Path(d) / "adapter").mkdir()
            (Path(d) / "adapter" / "adapter_config.json").write_text(json.dumps({"r": s.lora.r}))
            (Path(d) / "gridrun_card.json").write_text(json.dumps({"metrics": metrics, "searched": config}))
            (Path(d) / "position.json").write_text(json.dumps({"samples_seen": seen}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def replay_trainable(
    spec: Any,
    table: Table,
    trial_spec: Any = None,
    delay_s: float = 0.0,
    checkpoints: bool = False,
    axis: str = "recorded",
) -> Any:
    """``replay`` bound to a spec and table, with one trial's resources (CPU only: nothing is trained).

    The function is pickled by value, so Ray workers need not find ``bench/`` on their path.
    """
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if trial_spec is None:
        from gridrun.spec import to_optuna

        trial_spec = spec.with_params(to_optuna(spec.search.space)[1])  # as gridrun.launch builds it
    if axis not in ("recorded", "spec"):
        raise ValueError(f"axis must be 'recorded' or 'spec', got {axis!r}")
    fn = tune.with_parameters(replay, spec=trial_spec, table=table, delay_s=delay_s, checkpoints=checkpoints, axis=axis)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": 0})
