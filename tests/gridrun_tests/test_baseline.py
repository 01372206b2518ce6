"""The forgetting baseline is computed once per (model, probe, seq_len) and reused."""

from __future__ import annotations

import pytest

from gridrun.baseline import baseline_key, cached_baseline


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path))


def test_computed_once_then_reused(tiny_spec) -> None:
    spec = tiny_spec.trial_dict()
    calls: list[int] = []

    def compute(s):
        calls.append(1)
        return 1.25

    assert cached_baseline(spec, compute) == (1.25, False)

    def must_not_run(s):
        raise AssertionError("recomputed a cached baseline")

    assert cached_baseline(spec, must_not_run) == (1.25, True)
    assert len(calls) == 1


def test_key_changes_with_what_changes_the_number(tiny_spec) -> None:
    spec = tiny_spec.trial_dict()
    key = baseline_key(spec)
    for section, field, value in (
        ("forgetting", "seq_len", 32),
        ("forgetting", "samples", 3),
        ("model", "quantization", "none"),
        ("forgetting", "probe", "other.txt"),
    ):
        changed = {**spec, section: {**spec[section], field: value}}
        assert baseline_key(changed) != key, field
    # trial knobs do not change the base model's probe loss
    assert baseline_key({**spec, "train": {**spec["train"], "lr": 0.5}}) == key
    assert baseline_key({**spec, "lora": {**spec["lora"], "r": 64}}) == key


def test_local_probe_file_content_is_part_of_the_key(tiny_spec, tmp_path) -> None:
    f = tmp_path / "probe.txt"
    f.write_text("some general text\n\nmore text")
    spec = tiny_spec.trial_dict()
    spec = {**spec, "forgetting": {**spec["forgetting"], "probe": str(f)}}
    k1 = baseline_key(spec)
    f.write_text("edited text")
    assert baseline_key(spec) != k1
