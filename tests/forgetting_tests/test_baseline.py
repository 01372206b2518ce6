"""The base model's value of each forgetting measure is computed once per (model, measure inputs) and reused."""

from __future__ import annotations

import pytest

from forgetting import Baselines, McBase, McMeasure, ProbeBase, ProbeMeasure, baseline_key, cached_baselines
from gridrun.errors import GridrunError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRUN_CACHE", str(tmp_path))


def _probe_only(value: float):
    def compute(spec, names):
        assert names == ["probe"]
        return Baselines({"probe": ProbeBase(value)})

    return compute


def test_computed_once_then_reused(tiny_spec) -> None:
    calls: list[list[str]] = []

    def compute(spec, names):
        calls.append(names)
        return Baselines({"probe": ProbeBase(1.25)})

    assert cached_baselines(tiny_spec, compute) == (Baselines({"probe": ProbeBase(1.25)}), False)

    def must_not_run(spec, names):
        raise AssertionError("recomputed a cached baseline")

    assert cached_baselines(tiny_spec, must_not_run) == (Baselines({"probe": ProbeBase(1.25)}), True)
    assert calls == [["probe"]]


def test_only_the_missing_measures_are_computed_and_values_stay_typed(tiny_spec) -> None:
    assert cached_baselines(tiny_spec, _probe_only(2.0))[1] is False
    spec = tiny_spec.with_params({"forgetting.mc": "builtin:general-mc"})

    def mc_only(s, names):
        assert names == ["mc"]  # the probe's value is cached already
        return Baselines({"mc": McBase({"custom": 0.5})})

    got, cached = cached_baselines(spec, mc_only)
    assert not cached and got.of("probe") == ProbeBase(2.0) and got.of("mc") == McBase({"custom": 0.5})
    assert Baselines.from_json(got.to_json()) == got  # what the experiment record keeps reads back the same
    with pytest.raises(GridrunError, match="measure 'kl'"):
        got.of("kl")


def test_a_damaged_cache_file_is_started_anew_not_fatal(tiny_spec, tmp_path, caplog) -> None:
    """A half-written or hand-edited cache table costs a recomputation and a warning, never the command."""
    (tmp_path / "baselines.json").write_text('{"abc": {"value": 1.')  # cut off mid-write
    assert cached_baselines(tiny_spec, _probe_only(2.5))[0].of("probe").loss == 2.5
    assert "baselines.json is unreadable" in caplog.text
    assert cached_baselines(tiny_spec, _probe_only(9.0)) == (Baselines({"probe": ProbeBase(2.5)}), True)


def _key(spec, measure=ProbeMeasure) -> str:
    return baseline_key(spec, measure(spec))


def test_key_changes_with_what_changes_the_number(tiny_spec) -> None:
    spec = tiny_spec
    key = _key(spec)
    for path, value in (
        ("forgetting.seq_len", 32),
        ("forgetting.samples", 3),
        ("model.quantization", "none"),
        ("model.compute_dtype", "bfloat16"),
        ("model.attn_implementation", "eager"),
        ("forgetting.probe", "other.txt"),
    ):
        assert _key(spec.with_params({path: value})) != key, path
    # auto computes in float32 on CPU trials and in 16 bits on GPU ones
    auto = spec.with_params({"model.compute_dtype": "auto"})
    assert _key(auto.with_params({"resources.gpu": 0})) != _key(auto.with_params({"resources.gpu": 0.5}))
    # trial knobs do not change the base model's probe loss
    assert _key(spec.with_params({"train.lr": 0.5})) == key
    assert _key(spec.with_params({"lora.r": 64})) == key
    # benchmark accuracy depends on the items, not on the probe text
    mc = spec.with_params({"forgetting.mc": "builtin:general-mc"})
    assert _key(mc, McMeasure) == _key(mc.with_params({"forgetting.seq_len": 32}), McMeasure) != _key(mc)


def test_local_probe_file_content_is_part_of_the_key(tiny_spec, tmp_path) -> None:
    f = tmp_path / "probe.txt"
    f.write_text("some general text\n\nmore text")
    spec = tiny_spec.with_params({"forgetting.probe": str(f)})
    k1 = _key(spec)
    f.write_text("edited text")
    assert _key(spec) != k1


def test_a_dataset_folder_in_hub_layout_is_fingerprinted_by_its_files(tiny_spec, tmp_path) -> None:
    """Files in subset sub-folders count: editing one changes the key (a stale base score is never reused)."""
    folder = tmp_path / "wikitext" / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    (folder / "test-00000-of-00001.parquet").write_bytes(b"one")
    spec = tiny_spec.with_params({"forgetting.probe": str(tmp_path / "wikitext")})
    k1 = _key(spec)
    (folder / "test-00000-of-00001.parquet").write_bytes(b"other content")
    assert _key(spec) != k1


def test_primary_must_name_a_measure_that_is_on(tiny_spec) -> None:
    from forgetting import primary_metric

    assert primary_metric(tiny_spec) == "forget/delta"
    assert (
        primary_metric(tiny_spec.with_params({"forgetting.measures": ["kl"], "forgetting.primary": "kl"}))
        == "forget/kl_task"
    )
    with pytest.raises(GridrunError, match=r"forgetting.primary: unknown measure 'nope'; known: judge, kl, mc, probe"):
        primary_metric(tiny_spec.with_params({"forgetting.primary": "nope"}))
    with pytest.raises(GridrunError, match=r"forgetting.primary: measure 'mc' is not turned on"):
        primary_metric(tiny_spec.with_params({"forgetting.primary": "mc"}))


@pytest.mark.parametrize(
    ("params", "line"),
    [
        ({"forgetting.measures": ["klx"]}, "forgetting.measures: unknown measure 'klx'; known: judge, kl, mc, probe"),
        (
            {"forgetting.options": {"nope": {}}},
            "forgetting.options: unknown measure 'nope'; known: judge, kl, mc, probe",
        ),
        ({"forgetting.options": {"judge": {"url": "u"}}}, "forgetting.options.judge: measure 'judge' is not turned on"),
        (
            {"forgetting.measures": ["kl"], "forgetting.options": {"kl": {"x": 1}}},
            "forgetting.options.kl: measure kl takes no options",
        ),
        ({"forgetting.measures": ["judge"]}, "forgetting.options.judge.url: Field required"),
        (
            {"forgetting.measures": ["judge"], "forgetting.options": {"judge": {"url": "u", "model": "m", "limit": 0}}},
            "forgetting.options.judge.limit: Input should be greater than 0",
        ),
    ],
)
def test_bad_measures_and_options_are_one_line(tiny_spec, params, line) -> None:
    from forgetting import check_measures

    with pytest.raises(GridrunError) as e:
        check_measures(tiny_spec.with_params(params))
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
