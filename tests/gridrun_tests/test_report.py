"""The summary sums a trial up by its best checkpoint (the adapter it ships), not by its last eval round."""

from __future__ import annotations

from types import SimpleNamespace

from gridrun.checkpoints import Saved
from gridrun.report import format_summary, summarize
from gridrun.spec import spec_from_dict


def _result(tid: str, last: dict, lr: float) -> SimpleNamespace:
    metrics = {"trial_id": tid, "progress": 1, **last}
    return SimpleNamespace(metrics=metrics, path=f"/x/{tid}", error=None, config={"train.lr": lr}, checkpoint=None)


def test_rows_best_trial_and_front_come_from_best_checkpoints() -> None:
    spec = spec_from_dict({"name": "t"})
    grid = [
        # a: peaked mid-run (0.9 at 64 samples), then forgot; b: steady 0.6 at the end
        _result("a", {"task/format_success": 0.3, "forget/delta": 0.8, "objective": -0.1, "samples_seen": 128}, 1e-2),
        _result("b", {"task/format_success": 0.6, "forget/delta": 0.0, "objective": 0.6, "samples_seen": 128}, 1e-3),
    ]
    kept = {
        "a": Saved(
            0.85,
            SimpleNamespace(path="/x/a/ckpt1"),
            {"task/format_success": 0.9, "forget/delta": 0.1, "samples_seen": 64.0},
        ),
        "b": Saved(
            0.6,
            SimpleNamespace(path="/x/b/ckpt3"),
            {"task/format_success": 0.6, "forget/delta": 0.0, "samples_seen": 128.0},
        ),
    }
    s = summarize(spec, grid, {}, {"a": "run-a"}, {"probe": {"loss": 1.0}}, kept.get)
    a = next(r for r in s["trials"] if r["trial_id"] == "a")
    assert (a["task"], a["forget_delta"], a["objective"], a["samples_seen"], a["trained"]) == (0.9, 0.1, 0.85, 64, 128)
    assert a["last"] == {"task": 0.3, "forget_delta": 0.8, "objective": -0.1}
    assert a["adapter"] == "/x/a/ckpt1/adapter" and a["best_checkpoint"]["path"] == "/x/a/ckpt1"
    assert s["best"]["trial_id"] == "a"  # by the last round it would have been b
    assert set(s["pareto_front"]) == {"a", "b"}  # a: more task, b: less forgetting
    table = format_summary(s)
    assert "best at" in table and "trained" in table and "best trial a: objective 0.85" in table


def test_a_trial_without_checkpoints_is_summed_up_by_its_last_round() -> None:
    spec = spec_from_dict({"name": "t"})
    grid = [_result("c", {"task/format_success": 0.5, "forget/delta": 0.2, "objective": 0.4, "samples_seen": 8}, 1e-3)]
    row = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)["trials"][0]
    assert (row["task"], row["objective"], row["best_checkpoint"], row["adapter"]) == (0.5, 0.4, None, None)


def test_trained_is_the_furthest_round_the_driver_saw() -> None:
    """A trial the time budget stopped while its next rounds were in flight: Tune's last result (and its result
    files) stop at 16 samples, the driver's MLflow callback saw it reach 48; the summary says 48, as MLflow does."""
    spec = spec_from_dict({"name": "t"})
    grid = [_result("d", {"task/format_success": 0.5, "forget/delta": 0.2, "objective": 0.4, "samples_seen": 16}, 1e-3)]
    row = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None, trained={"d": 48})["trials"][0]
    assert row["trained"] == 48 and row["samples_seen"] == 16
    row = summarize(spec, grid, {}, {}, {"probe": {"loss": 1.0}}, lambda tid: None)["trials"][0]
    assert row["trained"] == 16


def test_pareto_labels_are_full_ids_and_do_not_overlap() -> None:
    """Sixteen trials, eight of them in one tight cluster (as a real study's are): every point's label is the
    8-character id used everywhere else, and no two labels overlap on the image."""
    import itertools
    import random

    from gridrun.report.plots import pareto_figure

    rng = random.Random(0)
    ids = [f"{rng.getrandbits(32):08x}" for _ in range(16)]
    pts = [(0.01 + 0.001 * i, 0.80 + 0.002 * i) for i in range(8)] + [(rng.random(), rng.random()) for _ in range(8)]
    trials = [{"trial_id": t, "task": y, "forget_delta": x} for t, (x, y) in zip(ids, pts, strict=True)]
    summary = {"name": "s", "objective_metric": "task/em", "trials": trials, "pareto_front": ids[:2]}
    summary["best"] = {"trial_id": ids[0]}
    fig = pareto_figure(summary)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(ids)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    overlapping = [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
    assert overlapping == []


def test_pareto_labels_beyond_max_labels_are_the_front_and_the_best() -> None:
    """200 trials piled in one spot (a replayed load test's): only the front and the best trial are labelled,
    every point is still drawn."""
    from gridrun.report.plots import MAX_LABELS, pareto_figure

    ids = [f"{i:08x}" for i in range(200)]
    trials = [{"trial_id": t, "task": 0.5 + 1e-4 * (i % 7), "forget_delta": 0.01} for i, t in enumerate(ids)]
    summary = {"name": "s", "objective_metric": "task/em", "trials": trials, "pareto_front": ids[:3]}
    summary["best"] = {"trial_id": ids[10]}
    assert len(trials) > MAX_LABELS
    ax = pareto_figure(summary).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted([*ids[:3], ids[10]])
    assert sum(len(c.get_offsets()) for c in ax.collections) == 200 + 1  # every trial, and the best one's ring
