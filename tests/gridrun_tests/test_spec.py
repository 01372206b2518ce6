"""Spec validation: every shipped YAML, overrides, and one-line errors for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gridrun.errors import SpecError
from gridrun.spec import apply_overrides, load_spec, spec_from_dict
from gridrun.spec.space import CategoricalDist, FloatDist, IntDist, parse_distribution, to_optuna, to_yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_validates_and_opens_with_its_command(path: Path) -> None:
    spec = load_spec(path)
    assert spec.search.space, "a shipped search space searches something"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# gridrun launch ") and str(path.relative_to(ROOT)) in first


def test_shipped_default_searches_lr_rank_and_sample_ratio() -> None:
    spec = load_spec(ROOT / "search_spaces" / "forgetting.yaml")
    assert {"train.lr", "lora.r", "data.sample_ratio"} <= set(spec.search.space)
    assert spec.search.num_trials >= 12


def _base() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "forgetting.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["train"].update(lr_typo=1),
            "unknown key 'train.lr_typo' in train; known keys: lr, epochs",
        ),
        (lambda d: d.update(trian={}), "unknown key 'trian' in top level"),
        (lambda d: d["train"].update(lr="fast"), "train.lr: Input should be a valid number"),
        (lambda d: d["lora"].update(r=0), "lora.r: Input should be greater than 0"),
        (
            lambda d: d["data"].update(sample_ratio=1.5),
            "data.sample_ratio: Input should be less than or equal to 1",
        ),
        (lambda d: d["data"].update(sample_ratio=0), "data.sample_ratio: Input should be greater than 0"),
        (
            lambda d: d["model"].update(quantization="nf3"),
            "model.quantization: Input should be 'nf4', 'int8' or 'none'",
        ),
        (
            lambda d: d["search"]["space"].update({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}),
            "search.space.train.lr: low (0.1) > high (0.01)",
        ),
        (
            lambda d: d["search"]["space"].update({"data.sample_ratio": {"type": "float", "low": 0.5, "high": 1.5}}),
            "search.space.data.sample_ratio.high: 1.5 is not a valid data.sample_ratio",
        ),
        (
            lambda d: d["search"]["space"].update({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}),
            "search.space.train.lrr: 'train.lrr' is not a spec field",
        ),
        (
            lambda d: d["search"]["space"].update({"lora.r": {"type": "int", "low": 2, "high": 8, "stepp": 2}}),
            "search.space.lora.r: unknown key 'stepp' for type int",
        ),
        (
            lambda d: d["search"]["space"].update({"lora.r": {"type": "normal", "low": 2}}),
            "search.space.lora.r.type: unknown distribution 'normal'",
        ),
        (
            lambda d: d["search"]["space"].update({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
            "search.space.train.lr.low: log scale needs low > 0",
        ),
        (
            lambda d: d["search"]["space"].update({"tracking.uri": {"type": "categorical", "choices": ["a"]}}),
            "cannot be searched",
        ),
        (
            lambda d: d["search"]["space"].update({"lora.r": {"type": "categorical", "choices": [4, "x"]}}),
            "search.space.lora.r.choices[1]: 'x' is not a valid lora.r",
        ),
        (lambda d: d["data"].update(template="no placeholder"), "data.template: template must be 'chat'"),
        (
            lambda d: d["data"].update(template='Reply like {"a": 1}: {prompt}'),
            "data.template: template has a brace field other than {prompt}",
        ),
        (
            lambda d: d["search"]["space"].update({"lora.r": {"type": "float", "low": 2, "high": 16}}),
            "search.space.lora.r: lora.r is a whole number; a float distribution",
        ),
        (
            lambda d: d["search"]["space"].update({"model.quantization": {"type": "categorical", "choices": ["nf4"]}}),
            "'model.quantization' cannot be searched",
        ),
        (
            lambda d: d["search"]["space"].update({"train.lr": {"type": ["float"], "low": 0.1, "high": 1}}),
            "search.space.train.lr.type: unknown distribution ['float']",
        ),
        (lambda d: d.pop("name"), "name: required field is missing"),
    ],
)
def test_bad_specs_fail_with_one_line_naming_the_field(mutate, expected: str) -> None:
    raw = _base()
    mutate(raw)
    with pytest.raises(SpecError) as e:
        spec_from_dict(raw)
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg


def test_overrides_merge_deeply() -> None:
    raw = _base()
    out = apply_overrides(
        raw, ["train.lr=1e-4", "lora.target_modules=[q_proj, v_proj]", "data.options.hard_negative_prob=0.5"]
    )
    assert out["train"]["lr"] == 1e-4
    assert out["train"]["batch_size"] == raw["train"]["batch_size"]  # siblings survive
    assert out["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert out["data"]["options"] == {**raw["data"]["options"], "hard_negative_prob": 0.5}
    assert raw["train"]["lr"] != 1e-4  # the input is not mutated


def test_overrides_reach_dotted_search_space_keys() -> None:
    out = apply_overrides(_base(), ["search.space.train.lr.high=0.01", "search.space.lora.dropout=0.0"])
    assert out["search"]["space"]["train.lr"] == {"type": "float", "low": 1e-4, "high": 0.01, "log": True}
    assert out["search"]["space"]["lora.dropout"] == 0.0
    spec = spec_from_dict(out)
    assert spec.search.space["train.lr"] == FloatDist(1e-4, 0.01, log=True)


def test_bad_override_syntax() -> None:
    with pytest.raises(SpecError, match=r"expected dotted\.key=value"):
        apply_overrides(_base(), ["train.lr"])


def test_space_round_trips_to_yaml_and_optuna() -> None:
    raw = {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "lora.r": {"type": "int", "low": 2, "high": 16, "step": 2},
        "data.template": {"type": "categorical", "choices": ["chat", "Q: {prompt}\nA: "]},
        "lora.dropout": 0.0,
    }
    space = {k: parse_distribution(v, k) for k, v in raw.items()}
    assert isinstance(space["lora.r"], IntDist) and isinstance(space["data.template"], CategoricalDist)
    assert to_yaml(space) == raw
    searched, fixed = to_optuna(space)
    assert fixed == {"lora.dropout": 0.0}
    assert searched["train.lr"].log and searched["lora.r"].step == 2
    spec = load_spec(ROOT / "search_spaces" / "forgetting.yaml")
    assert spec_from_dict(spec.model_dump(mode="json")) == spec  # dump → load is lossless


def test_with_params_validates_each_trial() -> None:
    spec = load_spec(ROOT / "search_spaces" / "forgetting.yaml")
    assert spec.with_params({"train.lr": 0.5}).train.lr == 0.5
    with pytest.raises(SpecError, match=r"lora\.r"):
        spec.with_params({"lora.r": -1})


def test_cluster_manifests_parse() -> None:
    docs = [d for f in sorted((ROOT / "docker").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds


def test_overrides_under_option_mappings_keep_the_whole_key() -> None:
    """`--set search.space.data.options.x={...}` adds one searched option; it never replaces data.options."""
    raw = {"search": {"space": {"data.options.hard_negative_prob": {"type": "float", "low": 0.1, "high": 0.4}}}}
    out = apply_overrides(
        raw,
        [
            "search.space.data.options.fix_bad_output_prob={type: float, low: 0.0, high: 0.2}",
            "search.space.data.options.hard_negative_prob.high=0.5",
            "search.space.train.lr.high=0.05",
        ],
    )["search"]["space"]
    assert out == {
        "data.options.hard_negative_prob": {"type": "float", "low": 0.1, "high": 0.5},
        "data.options.fix_bad_output_prob": {"type": "float", "low": 0.0, "high": 0.2},
        "train.lr": {"high": 0.05},
    }


def test_asha_max_t_covers_searched_epochs_and_sizes() -> None:
    """ASHA stops every trial at max_t: a searched epochs or train_size must raise it, not cap trials at the
    fixed value."""
    from gridrun.stopping import _largest, _train_size_upper

    raw = _base()
    raw["search"]["space"]["train.epochs"] = {"type": "float", "low": 1, "high": 3}
    raw["search"]["space"]["data.train_size"] = {"type": "categorical", "choices": [256, 1024]}
    spec = spec_from_dict(raw)
    assert _largest(spec, "train.epochs", spec.train.epochs) == 3
    assert _train_size_upper(spec) == 1024
    assert _largest(spec, "train.lr", 0.5) == pytest.approx(2e-2)


def test_trials_validate_their_sampled_values() -> None:
    spec = spec_from_dict(_base())
    trial = spec.with_params({"lora.r": 4.0, "train.lr": 1e-3})
    assert trial.lora.r == 4 and isinstance(trial.lora.r, int)
    with pytest.raises(SpecError, match=r"lora\.r"):
        spec.with_params({"lora.r": 3.7})


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("1h30m", 5400), (600, 600), ("45", 45)]
)
def test_time_budget_takes_durations_and_seconds(value: object, seconds: float) -> None:
    assert spec_from_dict({"name": "t", "search": {"time_budget": value}}).search.time_budget == seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("soon", "search.time_budget: not a duration; write e.g. 90s, 30m, 12h, 1h30m, or seconds (got 'soon')"),
        (True, "search.time_budget: not a duration"),
        (0, "search.time_budget: must be a positive, finite duration (got 0)"),
        ("-1h", "search.time_budget: must be a positive, finite duration (got '-1h')"),
    ],
)
def test_bad_time_budget_is_one_line(value: object, expected: str) -> None:
    with pytest.raises(SpecError) as e:
        spec_from_dict({"name": "t", "search": {"time_budget": value}})
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
