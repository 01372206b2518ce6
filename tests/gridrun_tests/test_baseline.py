"""The forgetting baseline is computed once per (model, probe, seq_len) and reused."""

from __future__ import annotations

import pytest

from gridrun.baseline import baseline_key, cached_baseline


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path))


def test_computed_once_then_reused(tiny_spec) -> None:
    spec = tiny_spec
    calls: list[int] = []

    def compute(s):
        calls.append(1)
        return 1.25

    assert cached_baseline(spec, compute) == (1.25, False)

    def must_not_run(s):
        raise AssertionError("recomputed a cached baseline")

    assert cached_baseline(spec, must_not_run) == (1.25, True)
    assert len(calls) == 1


def test_a_damaged_cache_file_is_started_anew_not_fatal(tiny_spec, tmp_path, caplog) -> None:
    """A half-written or hand-edited cache table costs a recomputation and a warning, never the command."""
    (tmp_path / "baselines.json").write_text('{"abc": {"value": 1.')  # cut off mid-write
    assert cached_baseline(tiny_spec, lambda s: 2.5) == (2.5, False)
    assert "baselines.json is unreadable" in caplog.text
    assert cached_baseline(tiny_spec, lambda s: 9.0) == (2.5, True)  # written anew, and read back


def test_key_changes_with_what_changes_the_number(tiny_spec) -> None:
    spec = tiny_spec
    key = baseline_key(spec)
    for path, value in (
        ("forgetting.seq_len", 32),
        ("forgetting.samples", 3),
        ("model.quantization", "none"),
        ("model.compute_dtype", "bfloat16"),
        ("forgetting.probe", "other.txt"),
    ):
        assert baseline_key(spec.with_params({path: value})) != key, path
    # trial knobs do not change the base model's probe loss
    assert baseline_key(spec.with_params({"train.lr": 0.5})) == key
    assert baseline_key(spec.with_params({"lora.r": 64})) == key


def test_local_probe_file_content_is_part_of_the_key(tiny_spec, tmp_path) -> None:
    f = tmp_path / "probe.txt"
    f.write_text("some general text\n\nmore text")
    spec = tiny_spec.with_params({"forgetting.probe": str(f)})
    k1 = baseline_key(spec)
    f.write_text("edited text")
    assert baseline_key(spec) != k1


def test_a_dataset_folder_in_hub_layout_is_fingerprinted_by_its_files(tiny_spec, tmp_path) -> None:
    """Files in subset sub-folders count: editing one changes the key (a stale base score is never reused)."""
    folder = tmp_path / "wikitext" / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    (folder / "test-00000-of-00001.parquet").write_bytes(b"one")
    spec = tiny_spec.with_params({"forgetting.probe": str(tmp_path / "wikitext")})
    k1 = baseline_key(spec)
    (folder / "test-00000-of-00001.parquet").write_bytes(b"other content")
    assert baseline_key(spec) != k1
