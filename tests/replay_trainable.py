"""A test-only trainable that replays recorded learning curves in milliseconds per trial, so the real Tuner,
searcher, ASHA, stoppers, checkpoint keeper and MLflow tracker can be driven at scale and through failures
(``use_replay`` swaps it in for ``trainables.qlora_sft`` in ``gridrun.launch``; ``python -m tests.replay_trainable
DELAY_S CLI-ARGS...`` runs the gridrun command line with it, for drills that need a process of their own).

``CURVES`` are the four trials of one tiny forgetting study (``search_spaces/forgetting.yaml``, 128 training
samples, 2 epochs, an eval round every 2 steps), read back from MLflow: one row per eval round. A config replays
the curve whose learning rate is nearest (log scale), on the samples axis its own spec gives (sample ratio ×
training size × epochs, an eval round every ``eval_every × batch_size`` samples), interpolated in progress. With
``checkpoints`` each round saves a checkpoint (its position, a stand-in adapter and card) and a restored trial
continues after it, as qlora_sft does; the checkpoint also names the process that wrote it (``pid``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Row keys of CURVES, in order.
KEYS = ("progress", "objective", "task/format_success", "forget/delta", "train/loss")
#: (learning rate, rows): recorded 2026-11, trials of `gridrun launch search_spaces/forgetting.yaml` (tiny model).
CURVES: list[tuple[float, list[list[float]]]] = [
    (0.006174, [[0.0748, -0.0038, 0.0, 0.0077, 4.3584], [0.1495, -0.2378, 0.0, 0.4756, 2.9909],
                [0.2243, -0.5863, 0.0, 1.1726, 2.7744], [0.2991, -0.4982, 0.125, 1.2464, 2.5124],
                [0.3738, -0.7002, 0.0, 1.4004, 2.4452], [0.4486, -0.6196, 0.0, 1.2391, 2.4047],
                [0.5234, -0.6553, 0.0, 1.3106, 2.3966], [0.5981, -0.6225, 0.0, 1.2449, 1.9792],
                [0.6729, -0.5891, 0.0, 1.1782, 1.7617], [0.7477, -0.6192, 0.0, 1.2385, 2.149],
                [0.8224, -0.5162, 0.125, 1.2825, 2.107], [0.8972, -0.1399, 0.5, 1.2797, 1.9577],
                [0.972, -0.136, 0.5, 1.272, 2.1833], [1.0, -0.1356, 0.5, 1.2711, 2.0241]]),
    (0.002028, [[0.0714, -0.0009, 0.0, 0.0018, 5.6558], [0.1429, -0.0099, 0.0, 0.0198, 3.5512],
                [0.2143, -0.0363, 0.0, 0.0727, 2.9915], [0.2857, -0.081, 0.0, 0.1619, 2.4584],
                [0.3571, -0.117, 0.0, 0.234, 2.7586], [0.4286, -0.1563, 0.0, 0.3126, 2.4571],
                [0.5, -0.2011, 0.0, 0.4022, 2.5687], [0.5714, -0.2185, 0.0, 0.4369, 2.2441],
                [0.6429, -0.2189, 0.0, 0.4379, 2.3309], [0.7143, -0.2234, 0.0, 0.4468, 2.3946],
                [0.7857, -0.2275, 0.0, 0.4551, 2.4276], [0.8571, -0.2265, 0.0, 0.453, 2.3044],
                [0.9286, -0.2255, 0.0, 0.451, 2.1393], [1.0, -0.225, 0.0, 0.45, 2.0088]]),
    (0.001832, [[0.0851, -0.0001, 0.0, 0.0002, 5.0076], [0.1702, -0.0059, 0.0, 0.0118, 4.5095],
                [0.2553, -0.0349, 0.0, 0.0698, 2.8444], [0.3404, -0.076, 0.0, 0.1519, 2.6886],
                [0.4255, -0.1127, 0.0, 0.2253, 2.6092], [0.5106, -0.1448, 0.0, 0.2897, 2.5178],
                [0.5957, -0.1627, 0.0, 0.3253, 2.1799], [0.6809, -0.1787, 0.0, 0.3575, 2.7199],
                [0.766, -0.1823, 0.0, 0.3646, 1.8294], [0.8511, -0.1847, 0.0, 0.3693, 2.3189],
                [0.9362, -0.186, 0.0, 0.372, 2.5733], [1.0, -0.1863, 0.0, 0.3727, 2.5018]]),
    (0.001016, [[0.0964, 0.0, 0.0, -0.0024, 4.7949], [0.1928, 0.0, 0.0, -0.004, 3.5655],
                [0.2892, 0.0, 0.0, -0.0032, 4.5572], [0.3855, -0.0006, 0.0, 0.0012, 4.3018],
                [0.4819, -0.0029, 0.0, 0.0058, 2.987], [0.5783, -0.0047, 0.0, 0.0094, 3.2711],
                [0.6747, -0.0063, 0.0, 0.0126, 3.0157], [0.7711, -0.0076, 0.0, 0.0153, 2.8934],
                [0.8675, -0.0085, 0.0, 0.0171, 2.4323], [0.9639, -0.0089, 0.0, 0.0177, 2.7257],
                [1.0, -0.0089, 0.0, 0.0178, 2.9352]]),
]  # fmt: skip


#: The 200-trial replay (test_drills' drill and bench/state_saves.py): 200 configs, eval every step, ASHA's grace
#: past the first rounds, no forgetting budget.
MANY_TRIALS = [
    "search.num_trials=200",
    "data.train_size=64",
    "train.epochs=2",
    "train.eval_every=1",
    "scheduler.grace_period=32",
    "forgetting.budget=null",
]


def _at(rows: list[list[float]], progress: float) -> dict[str, float]:
    """The curve's values at ``progress``, linearly between recorded rounds (the first round before it)."""
    prev = rows[0]
    for row in rows:
        if row[0] >= progress:
            w = 0.0 if row[0] == prev[0] else (progress - prev[0]) / (row[0] - prev[0])
            return {k: a + max(0.0, w) * (b - a) for k, a, b in zip(KEYS[1:], prev[1:], row[1:], strict=True)}
        prev = row
    return dict(zip(KEYS[1:], rows[-1][1:], strict=True))


def replay(config: dict[str, Any], spec: Any, delay_s: float = 0.0, checkpoints: bool = False) -> None:
    """Report the recorded curve nearest to ``config``, one result per eval round; ``delay_s`` before each."""
    from ray import tune

    from trainables.worker import quiet_teardown

    quiet_teardown()  # as qlora_sft does in its worker
    s = spec.with_params(config)
    lr = s.train.lr
    rows = min(CURVES, key=lambda c: abs(math.log(c[0] / lr)))[1]
    n = max(1, round(s.data.train_size * s.data.sample_ratio))
    total, every = max(1, round(n * s.train.epochs)), s.train.eval_every * s.train.batch_size
    done = 0
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            done = json.loads((Path(d) / "position.json").read_text())["samples_seen"]
    for seen in [*range(every, total, every), total]:
        if seen <= done:
            continue
        time.sleep(delay_s)  # stands in for training time
        metrics = {**_at(rows, seen / total), "samples_seen": seen, "progress": seen / total, "data/train_samples": n}
        if not checkpoints:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "adapter").mkdir()
            (Path(d) / "adapter" / "adapter_config.json").write_text(json.dumps({"r": s.lora.r}))
            (Path(d) / "gridrun_card.json").write_text(json.dumps({"metrics": metrics}))
            (Path(d) / "position.json").write_text(json.dumps({"samples_seen": seen, "pid": os.getpid()}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def replay_trainable(delay_s: float = 0.0, checkpoints: bool = False) -> Callable[..., Any]:
    """A stand-in for ``gridrun.launch._trainable`` that runs :func:`replay`."""

    def trainable(spec: Any, trial_spec: Any, base: Any) -> Any:
        import cloudpickle
        from ray import tune

        # by value: Ray workers need not find the tests package on their path (a cluster's worker node)
        if replay.__module__ != "__main__":  # __main__ is pickled by value anyway
            cloudpickle.register_pickle_by_value(sys.modules[replay.__module__])
        fn = tune.with_parameters(replay, spec=trial_spec, delay_s=delay_s, checkpoints=checkpoints)
        return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": 0})

    return trainable


def use_replay(monkeypatch: Any, delay_s: float = 0.0, checkpoints: bool = False) -> None:
    """Make ``gridrun.launch`` (and ``resume``) run :func:`replay` instead of the QLoRA trainable."""
    monkeypatch.setattr("gridrun.launch._trainable", replay_trainable(delay_s, checkpoints))


if __name__ == "__main__":  # python -m tests.replay_trainable DELAY_S launch|resume ...
    import logging

    import gridrun.launch
    from gridrun.cli import main

    gridrun.launch._trainable = replay_trainable(float(sys.argv[1]), checkpoints=True)
    if os.environ.get("REPLAY_HOLD_STOP_S"):  # a clean stop that takes this long (a slow last sync, say)
        from gridrun.tracking import MLflowTracker

        ended = MLflowTracker.on_experiment_end

        def held(self: Any, trials: list[Any], **info: Any) -> None:
            print("replay: the clean stop is held", flush=True)
            time.sleep(float(os.environ["REPLAY_HOLD_STOP_S"]))
            ended(self, trials, **info)

        MLflowTracker.on_experiment_end = held  # type: ignore[method-assign]
    logging.basicConfig(level=logging.WARNING, format="gridrun: %(message)s")
    sys.exit(main(sys.argv[2:]))
