"""Early stopping: the forgetting budget, a non-finite loss and ASHA, each with the reason it records.

No Ray cluster: the stoppers are called directly and ASHA is driven with fake trials and results.
"""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from gridrun.spec import spec_from_dict
from gridrun.stopping import ForgettingBudget, NonFiniteLoss, RecordingASHA, asha_max_t, build_stopping

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


# ------------------------------------------------------------------------------------------- ForgettingBudget


def _run(stopper: ForgettingBudget, trial_id: str, deltas: list[float | None]) -> list[bool]:
    """The stopper's answer to each result; None stands for a result without forget/delta."""
    return [stopper(trial_id, {} if d is None else {"forget/delta": d}) for d in deltas]


def test_budget_stops_exactly_at_the_patience_th_consecutive_over_budget_result() -> None:
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=3, reasons=reasons)
    assert _run(stopper, "t", [0.6, 0.7, 0.8]) == [False, False, True]
    assert reasons == {"t": "forgetting budget (forget/delta 0.800 > 0.5 for 3 evals)"}


def test_budget_with_patience_one_stops_at_the_first_over_budget_result() -> None:
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=1.0, patience=1, reasons=reasons)
    assert _run(stopper, "t", [0.2, 1.25]) == [False, True]
    assert reasons == {"t": "forgetting budget (forget/delta 1.250 > 1.0 for 1 evals)"}


def test_an_under_budget_result_resets_the_count() -> None:
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=2, reasons=reasons)
    assert _run(stopper, "t", [0.9, 0.1, 0.9]) == [False, False, False]
    assert reasons == {}
    assert _run(stopper, "t", [0.9]) == [True]  # the 2nd in a row since the reset
    assert reasons == {"t": "forgetting budget (forget/delta 0.900 > 0.5 for 2 evals)"}


def test_a_delta_equal_to_the_budget_is_not_over_it() -> None:
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=2, reasons={})
    assert _run(stopper, "t", [0.6, 0.5, 0.6]) == [False, False, False]


def test_results_without_forget_delta_neither_count_nor_reset() -> None:
    """A result with no forget/delta (e.g. a train-only report) is skipped: it does not break the run of
    over-budget evaluations either."""
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=2, reasons=reasons)
    assert _run(stopper, "t", [None, None]) == [False, False]
    assert _run(stopper, "t", [0.9, None, None, 0.7]) == [False, False, False, True]
    assert reasons == {"t": "forgetting budget (forget/delta 0.700 > 0.5 for 2 evals)"}


def test_counts_are_per_trial() -> None:
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=2, reasons=reasons)
    assert stopper("a", {"forget/delta": 0.9}) is False
    assert stopper("b", {"forget/delta": 0.9}) is False
    assert stopper("b", {"forget/delta": 0.1}) is False  # resets b only
    assert stopper("a", {"forget/delta": 0.8}) is True
    assert stopper("b", {"forget/delta": 0.9}) is False
    assert reasons == {"a": "forgetting budget (forget/delta 0.800 > 0.5 for 2 evals)"}


def test_the_first_recorded_reason_is_kept() -> None:
    reasons = {"t": "non-finite loss"}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=1, reasons=reasons)
    assert stopper("t", {"forget/delta": 0.9}) is True
    assert reasons == {"t": "non-finite loss"}

    reasons.clear()
    assert _run(stopper, "u", [0.9, 2.0]) == [True, True]  # still over budget: stop again, keep the first reason
    assert reasons == {"u": "forgetting budget (forget/delta 0.900 > 0.5 for 1 evals)"}


def _at(samples: int, delta: float) -> dict[str, float]:
    return {"forget/delta": delta, "samples_seen": samples}


def test_a_round_reported_again_after_a_restore_counts_once() -> None:
    """A trial restored from its checkpoint at 16 samples reports the round at 24 again: Tune's snapshot of the
    stopper already counted it (the drill's race). Counted twice, patience 2 stopped the trial a round early."""
    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.25, patience=2, reasons=reasons)
    assert [stopper("t", _at(n, d)) for n, d in [(8, 0.01), (16, 0.1), (24, 0.49)]] == [False, False, False]
    restored = pickle.loads(pickle.dumps(stopper))  # the snapshot Tune restores it from
    assert restored("t", _at(24, 0.49)) is False  # the same round again: still the first over budget
    assert restored("t", _at(32, 1.17)) is True
    assert restored.reasons == {"t": "forgetting budget (forget/delta 1.170 > 0.25 for 2 evals)"}


def test_a_restore_before_a_reset_brings_back_the_streak_before_it() -> None:
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=3, reasons={})
    assert [stopper("t", _at(n, d)) for n, d in [(8, 0.9), (16, 0.9), (24, 0.1)]] == [False, False, False]
    assert stopper("t", _at(24, 0.9)) is True  # restored at 16: this run of 24 is over, the 3rd in a row
    assert stopper("u", _at(8, 0.9)) is False and stopper("u", _at(8, 0.9)) is False  # the same round twice


def test_a_stopper_pickled_before_positions_keeps_its_count() -> None:
    """An experiment snapshot from before positions were kept holds a bare count per trial (``_over``)."""
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=2, reasons={})
    state = {k: v for k, v in stopper.__dict__.items() if k != "_rounds"}
    old = ForgettingBudget.__new__(ForgettingBudget)
    old.__setstate__({**state, "_over": {"a": 1, "b": 0}})
    assert old("a", _at(8, 0.9)) is True
    assert old("b", _at(8, 0.9)) is False


def test_the_budget_never_stops_the_whole_experiment() -> None:
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=1, reasons={})
    stopper("t", {"forget/delta": 9.0})
    assert stopper.stop_all() is False


# ---------------------------------------------------------------------------------------------- NonFiniteLoss


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_with_its_reason(loss: float) -> None:
    reasons: dict[str, str] = {}
    stopper = NonFiniteLoss(reasons)
    assert stopper("t", {"train/loss": loss}) is True
    assert reasons == {"t": "non-finite loss"}
    assert stopper.stop_all() is False


@pytest.mark.parametrize("result", [{"train/loss": 2.5}, {"train/loss": 0.0}, {"train/loss": -1e308}, {}])
def test_finite_or_missing_loss_does_not_stop(result: dict) -> None:
    reasons: dict[str, str] = {}
    assert NonFiniteLoss(reasons)("t", result) is False
    assert reasons == {}


def test_non_finite_loss_keeps_an_earlier_reason() -> None:
    reasons = {"t": "forgetting budget (forget/delta 0.900 > 0.5 for 1 evals)"}
    assert NonFiniteLoss(reasons)("t", {"train/loss": math.nan}) is True
    assert reasons == {"t": "forgetting budget (forget/delta 0.900 > 0.5 for 1 evals)"}


# ---------------------------------------------------------------------------------------------- RecordingASHA


class _Asha:
    """A RecordingASHA (grace 8, reduction 2, max_t 32: rungs at 8 and 16 samples) fed fake trials."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self.sched = RecordingASHA(
            self.reasons,
            time_attr="samples_seen",
            metric="objective",
            mode="max",
            max_t=32,
            grace_period=8,
            reduction_factor=2,
        )
        self.trials: dict[str, SimpleNamespace] = {}

    def result(self, tid: str, samples: int, objective: float | None, progress: float | None) -> str:
        if tid not in self.trials:
            self.trials[tid] = SimpleNamespace(trial_id=tid)
            self.sched.on_trial_add(None, self.trials[tid])
        res: dict = {"samples_seen": samples}
        if objective is not None:
            res["objective"] = objective
        if progress is not None:
            res["progress"] = progress
        return self.sched.on_trial_result(None, self.trials[tid], res)


def test_asha_rungs_are_at_grace_times_reduction_powers() -> None:
    asha = _Asha()
    assert [milestone for milestone, _ in asha.sched._brackets[0]._rungs] == [32, 16, 8]


def test_asha_stops_trials_behind_the_rung_cutoff_and_records_why() -> None:
    asha = _Asha()
    # rung 8: a sets the bar (no cutoff yet), b is below a, c is above median(a, b) = 0.7, d below
    # median(a, b, c) = 0.8
    assert asha.result("a", 8, 0.9, 0.25) == CONTINUE
    assert asha.result("b", 8, 0.5, 0.25) == STOP
    assert asha.result("c", 8, 0.8, 0.25) == CONTINUE
    assert asha.result("d", 8, 0.6, 0.25) == STOP
    # e reports first past the rung, at 10 samples: compared with median(0.9, 0.5, 0.8, 0.6) = 0.7
    assert asha.result("e", 10, 0.65, 0.3) == STOP
    # rung 16: a sets the bar, c falls behind it
    assert asha.result("a", 16, 0.95, 0.5) == CONTINUE
    assert asha.result("c", 16, 0.85, 0.5) == STOP
    # a reaches max_t: stopped there, but it finished — no ASHA reason
    assert asha.result("a", 24, 0.96, 0.75) == CONTINUE
    assert asha.result("a", 32, 0.97, 1.0) == STOP
    assert asha.reasons == {
        "b": "asha (behind at 8 samples)",
        "d": "asha (behind at 8 samples)",
        "e": "asha (behind at 10 samples)",
        "c": "asha (behind at 16 samples)",
    }


def test_asha_stop_on_a_finished_trial_records_no_reason() -> None:
    """A trial with a smaller sample budget (e.g. a lower sample_ratio) ends at a rung: ASHA says STOP on that
    final result, but the trial completed, so it was not stopped by ASHA."""
    asha = _Asha()
    assert asha.result("a", 16, 0.9, 0.5) == CONTINUE
    assert asha.result("short", 16, 0.1, 1.0) == STOP
    assert asha.reasons == {}


def test_asha_without_progress_counts_as_unfinished() -> None:
    asha = _Asha()
    assert asha.result("a", 8, 0.9, None) == CONTINUE
    assert asha.result("b", 8, 0.1, None) == STOP
    assert asha.reasons == {"b": "asha (behind at 8 samples)"}


def test_asha_ignores_results_without_the_metric_and_keeps_earlier_reasons() -> None:
    asha = _Asha()
    assert asha.result("a", 8, 0.9, 0.25) == CONTINUE
    assert asha.result("b", 8, None, 0.25) == CONTINUE  # no objective: no decision, not recorded at the rung
    assert asha.sched._brackets[0]._rungs[-1][1] == {"a": 0.9}
    asha.reasons["b"] = "forgetting budget (forget/delta 2.000 > 1.0 for 2 evals)"
    assert asha.result("b", 8, 0.1, 0.25) == STOP
    assert asha.reasons == {"b": "forgetting budget (forget/delta 2.000 > 1.0 for 2 evals)"}


# --------------------------------------------------------------------------------------------- build_stopping


def _spec(**sections: dict):
    return spec_from_dict({"name": "t", **sections})


def test_build_stopping_without_scheduler_or_budget() -> None:
    reasons: dict[str, str] = {}
    scheduler, stopper = build_stopping(_spec(scheduler={"type": "none"}, forgetting={"budget": None}), reasons)
    assert scheduler is None
    assert stopper("t", {"forget/delta": 100.0}) is False
    assert stopper("t", {"forget/delta": 100.0}) is False
    assert reasons == {}
    assert stopper("t", {"train/loss": math.inf}) is True
    assert reasons == {"t": "non-finite loss"}
    assert stopper.stop_all() is False


def test_build_stopping_stops_on_the_forgetting_budget() -> None:
    reasons: dict[str, str] = {}
    _, stopper = build_stopping(_spec(forgetting={"budget": 1.0, "patience": 2}), reasons)
    assert stopper("t", {"forget/delta": 1.5, "train/loss": 1.0}) is False
    assert stopper("t", {"forget/delta": 1.2, "train/loss": 1.0}) is True
    assert reasons == {"t": "forgetting budget (forget/delta 1.200 > 1.0 for 2 evals)"}


def test_build_stopping_asha_settings() -> None:
    reasons: dict[str, str] = {}
    spec = _spec(
        data={"train_size": 64},
        train={"epochs": 2},
        scheduler={"type": "asha", "grace_period": 16, "reduction_factor": 2, "brackets": 2},
    )
    scheduler, _ = build_stopping(spec, reasons)
    assert isinstance(scheduler, RecordingASHA)
    assert scheduler.reasons is reasons
    assert (scheduler._time_attr, scheduler._metric, scheduler._mode) == ("samples_seen", "objective", "max")
    assert scheduler._max_t == asha_max_t(spec) == 128
    assert scheduler._reduction_factor == 2
    assert len(scheduler._brackets) == 2
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [128, 64, 32, 16]
    assert [m for m, _ in scheduler._brackets[1]._rungs] == [128, 64, 32]  # bracket s=1 starts a rung later


def test_build_stopping_caps_the_grace_period_at_max_t() -> None:
    """A grace period longer than any trial would make ASHA refuse to start (grace_period must be <= max_t):
    it is capped at max_t, one rung there."""
    spec = _spec(data={"train_size": 64}, train={"epochs": 1}, scheduler={"type": "asha", "grace_period": 1000})
    assert asha_max_t(spec) == 64
    scheduler, _ = build_stopping(spec, {})
    assert scheduler is not None and scheduler._max_t == 64
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [64]


# ------------------------------------------------------------------------------------------------- TimeBudget


class _Clock:
    """Stands in for time.monotonic: the budget's clock moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr("gridrun.stopping.time.monotonic", c)
    return c


def _trial(trial_id: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_time_budget_lets_running_trials_finish_their_round_and_starts_nothing_after(clock: _Clock) -> None:
    from gridrun.stopping import TimeBudget, TimeBudgetStopper

    reasons: dict[str, str] = {}
    budget, stopper = TimeBudget(90.0, reasons), TimeBudgetStopper()
    a, b, pending = _trial("a"), _trial("b"), _trial("p", "PENDING")
    trials = [a, b, pending]
    budget.setup(stop=stopper)
    budget.on_step_begin(0, trials)  # the clock starts at the search's first step, not at Ray's start
    clock.now += 60
    assert stopper("a", {"progress": 0.5}) is False and stopper.stop_all() is False
    assert budget.remaining_s == pytest.approx(30)
    clock.now += 31  # spent: a and b are mid-round
    assert stopper.stop_all() is False, "trials mid-round finish it first"
    assert stopper("a", {"progress": 0.5}) is True  # a's round is reported (recorded), then a stops
    b.status = "TERMINATED"  # (b ended by itself meanwhile)
    assert stopper.stop_all() is False, "a is completed only once Tune has saved its checkpoint"
    b.status = "RUNNING"
    a.status = "TERMINATED"
    assert reasons == {"a": "time budget (1m30s spent)"}
    late = _trial("c")
    trials.append(late)
    budget.on_trial_start(1, trials, late)  # a slot freed after the budget ran out
    assert stopper.stop_all() is False, "b is still mid-round"
    assert stopper("b", {"progress": 1.0}) is False  # b's last round ends it anyway: `completed`, not stopped
    b.status = "TERMINATED"
    quick = _trial("d")  # another late starter, quick enough to report a round before the search ends
    trials.append(quick)
    budget.on_trial_start(2, trials, quick)
    assert stopper("d", {"progress": 0.2}) is True
    assert stopper.stop_all() is False, "d's reported round is completed first"
    quick.status = "TERMINATED"
    assert stopper.stop_all() is True, "nothing started before the end is mid-round: the search ends"
    assert budget.not_run == {"c", "p"}  # ended before a round of theirs was recorded
    assert reasons == {"a": "time budget (1m30s spent)", "d": "time budget (1m30s spent)"}
    budget.on_experiment_end(trials)
    assert TimeBudget.active is None and stopper.stop_all() is False


def test_time_budget_remainder_across_sessions(clock: _Clock) -> None:
    """What resume gets: the budget less the larger of the metadata's and the snapshot's spent time; the clock
    does not run while no driver does."""
    import pickle

    from gridrun.stopping import TimeBudget, format_duration

    budget = TimeBudget(3600.0, {})
    budget.setup()
    budget.on_step_begin(0, [])
    clock.now += 1000
    budget.on_step_begin(1, [])
    assert budget.get_state() == {"spent_s": pytest.approx(1000)}
    restored = pickle.loads(pickle.dumps(budget))  # as tuner.pkl holds it: no clock reading, no trials
    assert restored._last is None and restored._trials == []
    restored.spent_s = 1200.0  # from the experiment's metadata (written at the end of the session)
    restored.set_state({"spent_s": 1000.0})  # an older snapshot does not give time back
    assert restored.remaining_s == pytest.approx(2400)
    restored.setup()
    clock.now += 5000  # the driver was down: not counted
    restored.on_step_begin(0, [])
    assert restored.remaining_s == pytest.approx(2400) and not restored.expired
    assert [format_duration(s) for s in (43200, 5400, 90, 30, 0.25)] == ["12h", "1h30m", "1m30s", "30s", "0.2s"]


def test_build_stopping_adds_the_time_budget_only_when_asked() -> None:
    from gridrun.stopping import TimeBudgetStopper

    _, plain = build_stopping(_spec(), {})
    _, timed = build_stopping(_spec(search={"time_budget": "12h"}), {})
    assert not any(isinstance(s, TimeBudgetStopper) for s in plain._stoppers)
    assert any(isinstance(s, TimeBudgetStopper) for s in timed._stoppers)


def test_asha_on_the_epoch_axis() -> None:
    """`scheduler.axis: epoch`: rungs count the share of the training set seen (squad's prompt formats, whose
    samples hold one question or several, are compared at the same share of the questions)."""
    reasons: dict[str, str] = {}
    spec = _spec(
        train={"epochs": 2},
        scheduler={"type": "asha", "axis": "epoch", "grace_period": 0.25, "reduction_factor": 2},
        search={"space": {"train.epochs": {"type": "float", "low": 1, "high": 4}}},
    )
    scheduler, _ = build_stopping(spec, reasons)
    assert scheduler is not None and scheduler._time_attr == "epoch" and scheduler._max_t == 4
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [4.0, 2.0, 1.0, 0.5, 0.25]
    trials = [SimpleNamespace(trial_id=t, status="RUNNING", evaluated_params={}) for t in "ab"]
    for t in trials:
        scheduler.on_trial_add(None, t)
    assert scheduler.on_trial_result(None, trials[0], {"epoch": 0.3, "objective": 0.9, "progress": 0.1}) == CONTINUE
    assert scheduler.on_trial_result(None, trials[1], {"epoch": 0.3, "objective": 0.1, "progress": 0.1}) == STOP
    assert reasons == {"b": "asha (behind at 0.3 epochs)"}


# -------------------------------------------------------------------------------------- restore (StoppingState)


def _stream() -> list[tuple[str, dict]]:
    """Results of three trials, interleaved as Tune delivers them: over budget, under, and ASHA-ranked."""
    out = []
    for step, samples in enumerate((16, 32, 48, 64, 80, 96, 112, 128)):
        out.append(
            (
                "a",
                {
                    "forget/delta": 0.6 + 0.01 * step,
                    "samples_seen": samples,
                    "objective": 0.5,
                    "progress": samples / 128,
                },
            )
        )
        out.append(("b", {"forget/delta": 0.1, "samples_seen": samples, "objective": 0.9, "progress": samples / 128}))
        out.append(
            ("c", {"forget/delta": 0.3, "samples_seen": samples, "objective": 0.1 * step, "progress": samples / 128})
        )
    return out


def _drive(parts, results) -> list[tuple[str, bool, str | None]]:
    scheduler, stopper = parts
    out, added = [], set()
    for tid, r in results:
        if tid not in added:  # Tune adds each trial it starts, and again each trial it restores
            scheduler.on_trial_add(None, SimpleNamespace(trial_id=tid))
            added.add(tid)
        decision = scheduler.on_trial_result(None, SimpleNamespace(trial_id=tid), r)
        out.append((tid, stopper(tid, r), decision))
    return out


@pytest.mark.parametrize("cut", [1, 3, 4, 7, 13])
def test_stop_reasons_and_asha_survive_a_tune_restore(cut: int, monkeypatch) -> None:
    """Pickled as Tune pickles them (as Ray's own stopper tests do): a restored driver gets its stopper from the
    experiment snapshot (the controller's state), its scheduler and callbacks from ``tuner.pkl`` (as at launch)
    and the callbacks' snapshot state. The continued run decides exactly what the uninterrupted one does, and
    every reason — recorded by the snapshot's stopper copy too — is where the callbacks read it."""
    import pickle

    from gridrun import stopping
    from gridrun.stopping import StoppingState, StopReasons

    spec = _spec(
        data={"train_size": 64},
        train={"epochs": 2},
        forgetting={"budget": 0.5, "patience": 2},
        scheduler={"type": "asha", "grace_period": 16, "reduction_factor": 2},
    )
    results = _stream()

    whole = StopReasons()
    expected = _drive(build_stopping(spec, whole), results)

    reasons = StopReasons()
    scheduler, stopper = build_stopping(spec, reasons)
    tuner_pkl = pickle.dumps((scheduler, StoppingState(scheduler, reasons), reasons))  # at launch
    first = _drive((scheduler, stopper), results[:cut])
    runner_data = pickle.dumps(stopper)  # the controller's state in the experiment snapshot
    callback_states = pickle.dumps(StoppingState(scheduler, reasons).get_state())

    monkeypatch.setattr(stopping, "_BOOKS", {})  # a new driver process
    scheduler2, state2, reasons2 = pickle.loads(tuner_pkl)
    stopper2 = pickle.loads(runner_data)
    state2.set_state(pickle.loads(callback_states))
    rest = _drive((scheduler2, stopper2), results[cut:])

    assert first + rest == expected
    assert dict(reasons2) == dict(whole) and whole["a"].startswith("forgetting budget (forget/delta")
    assert any(r.startswith("asha") for r in whole.values())  # ASHA's rungs are exercised too


def test_a_plain_dict_of_reasons_splits_in_two_on_restore() -> None:
    """What StopReasons guards against: the stopper from the snapshot and the callbacks from tuner.pkl are two
    unpickled copies, so a plain dict they shared at launch is two dicts after a restore."""
    import pickle

    reasons: dict[str, str] = {}
    stopper = ForgettingBudget(metric="forget/delta", budget=0.5, patience=1, reasons=reasons)
    callbacks_reasons = pickle.loads(pickle.dumps(reasons))
    restored = pickle.loads(pickle.dumps(stopper))
    assert restored("a", {"forget/delta": 0.9}) is True
    assert "a" in restored.reasons and "a" not in callbacks_reasons


def test_asha_top_rung_counts_a_file_by_its_rows_and_the_largest_sample_ratio(tmp_path) -> None:
    """The source's rows are counted without loading them (Parquet's metadata, a JSONL file's lines), and a trial
    sees at most the largest searched sample_ratio of them per epoch: that, not the whole source, is the top rung."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainables.data import count_rows

    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(1000)]
    parquet, jsonl = tmp_path / "t.parquet", tmp_path / "t.jsonl"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is no row
    space = {"data.sample_ratio": {"type": "float", "low": 0.01, "high": 0.05}}
    for path in (parquet, jsonl):
        spec = _spec(data={"task": str(path)}, train={"epochs": 2}, search={"space": space})
        assert count_rows(spec.data) == 1000
        assert asha_max_t(spec) == 2 * 50  # 2 epochs of at most 5% of 1000 rows
    fixed = _spec(data={"task": str(parquet), "sample_ratio": 0.25}, train={"epochs": 1})
    assert asha_max_t(fixed) == 250
