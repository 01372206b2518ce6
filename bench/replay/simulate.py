"""The Tuner's decisions on replayed curves without Ray: a discrete-event loop over samples seen.

``bench/search_efficiency.py`` runs its strategy table through the real ``tune.Tuner`` (``trainable.py``); a sweep
of many defaults over 20 seeds each would cost hours of actor start-ups on a shared 2-core machine, so it runs
here instead. The pieces that decide are gridrun's own — the searcher from ``gridrun.searcher.build_searcher`` (Optuna
TPE or random, seeded), ASHA and the stoppers from ``gridrun.stopping.build_stopping`` — called in the order
Tune's ``TuneController`` calls them (``_process_trial_result`` and ``stop_trial``, Ray 2.5x):

* a free slot (``search.max_concurrent``) gets ``searcher.suggest``; ASHA gets ``on_trial_add``;
* each result goes to the stopper first; if it does not stop the trial, to ASHA's ``on_trial_result``; if neither
  stops it, to ``searcher.on_trial_result``;
* a stopped or finished trial goes to ASHA's and the searcher's ``on_trial_complete`` with its last result (a
  finished trial's last result passes the stopper once more, as Tune's duplicate ``done`` result does).

Time is samples seen: every running trial trains at the same rate, so the next result is the one whose trial
reaches its next eval round first, and a new trial starts when a slot frees. ``search_efficiency.py --check``
compares this loop with the Tuner on the same seeds.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from bench.replay.trainable import Table, nearest, reported

__all__ = ["simulate"]


@dataclass
class _Trial:
    """What ASHA reads of a Tune trial."""

    trial_id: str


def simulate(
    spec: Any,
    table: Table,
    warm: list[Any] | None = None,
    results: list[tuple[str, dict[str, Any]]] | None = None,
    configs: dict[str, dict[str, Any]] | None = None,
) -> list[tuple[str, int, float]]:
    """One search: (trial id, samples_seen, objective) for every result, in the order Tune would see them.

    Args:
        warm: finished Optuna trials the searcher starts from (``gridrun.warm_start``); default: the spec's own.
        results: if given, (trial id, full result) for every result is appended to it.
        configs: if given, trial id -> the config the searcher suggested is written into it.
    """
    from ray.tune.schedulers import TrialScheduler

    from gridrun.searcher import build_searcher
    from gridrun.spec import to_optuna
    from gridrun.stopping import build_stopping

    searched, fixed = to_optuna(spec.search.space)
    trial_spec = spec.with_params(fixed)
    searcher = build_searcher(spec, searched, warm)
    scheduler, stopper = build_stopping(spec, {})
    slots = spec.search.max_concurrent or 1
    events: list[tuple[str, int, float]] = []
    queue: list[tuple[int, int, str]] = []  # (time of the next result, start order, trial id)
    curves: dict[str, list[dict[str, Any]]] = {}
    position: dict[str, int] = {}
    started = 0

    def start(now: int) -> None:
        nonlocal started
        tid = f"{started:05d}"
        config = searcher.suggest(tid)
        if configs is not None:
            configs[tid] = config
        s = trial_spec.with_params(config)
        curves[tid] = [reported(r) for r in table[nearest(table, s.train.lr, s.lora.r, s.data.sample_ratio)]]
        position[tid] = 0
        if scheduler is not None:
            scheduler.on_trial_add(None, _Trial(tid))
        heapq.heappush(queue, (now + curves[tid][0]["samples_seen"], started, tid))
        started += 1

    def complete(tid: str, result: dict[str, Any]) -> None:
        if scheduler is not None:
            scheduler.on_trial_complete(None, _Trial(tid), result)
        searcher.on_trial_complete(tid, result=result)

    while started < min(slots, spec.search.num_trials):
        start(0)
    while queue:
        now, order, tid = heapq.heappop(queue)
        i = position[tid]
        result = {**curves[tid][i], "training_iteration": i + 1, "trial_id": tid}  # Tune adds these
        events.append((tid, int(result["samples_seen"]), float(result["objective"])))
        if results is not None:
            results.append((tid, result))
        last = i == len(curves[tid]) - 1
        stop = stopper(tid, result)
        if not stop and scheduler is not None:
            stop = scheduler.on_trial_result(None, _Trial(tid), result) == TrialScheduler.STOP
        if not stop:
            searcher.on_trial_result(tid, result)
        if last and not stop:
            stopper(tid, result)  # Tune's duplicate "done" result
        if stop or last:
            complete(tid, result)
            if started < spec.search.num_trials:
                start(now)
            continue
        position[tid] = i + 1
        heapq.heappush(queue, (now + curves[tid][i + 1]["samples_seen"] - result["samples_seen"], order, tid))
    return events
