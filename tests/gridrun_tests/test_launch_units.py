"""Launch's pure helpers: how many trials run at once, the Optuna searcher, and parameter importance.

No Ray cluster: the searcher is built and asked for configs directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from gridrun.launch import _concurrency, _searcher
from gridrun.report.summary import importance
from gridrun.spec import spec_from_dict, to_optuna

SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "lora.r": {"type": "categorical", "choices": [4, 8, 16]},
}


def _spec(**sections: dict):
    return spec_from_dict({"name": "t", **sections})


# ------------------------------------------------------------------------------------------------ _concurrency


@pytest.mark.parametrize(
    ("resources", "num_trials", "total", "expected"),
    [
        ({"cpu": 1}, 16, {"CPU": 2.0}, 2),  # one slot per CPU
        ({"cpu": 2}, 16, {"CPU": 7.0}, 3),  # floor(7 / 2)
        ({"cpu": 0.5}, 16, {"CPU": 3.0}, 6),  # fractional CPUs pack more
        ({"cpu": 1}, 16, {}, 1),  # no CPU count: one
        ({"cpu": 1, "gpu": 0.25}, 16, {"CPU": 16.0, "GPU": 1.0}, 4),  # GPU fraction caps the CPU slots
        ({"cpu": 1, "gpu": 0.25}, 16, {"CPU": 2.0, "GPU": 1.0}, 2),  # ... and CPUs cap the GPU slots
        ({"cpu": 1, "gpu": 1}, 16, {"CPU": 16.0, "GPU": 2.0}, 2),
        ({"cpu": 1, "gpu": 0.1}, 16, {"CPU": 16.0, "GPU": 0.3}, 3),  # 0.3 / 0.1 = 2.999...: still 3 slots
        ({"cpu": 1, "gpu": 0.5}, 16, {"CPU": 16.0}, 1),  # a GPU trial on a cluster without GPUs: at least 1
        ({"cpu": 4}, 16, {"CPU": 2.0}, 1),  # a trial bigger than the machine: at least 1
        ({"cpu": 1}, 5, {"CPU": 64.0}, 5),  # never more than the trials there are
    ],
)
def test_concurrency_from_resources(resources: dict, num_trials: int, total: dict, expected: int) -> None:
    spec = _spec(resources=resources, search={"num_trials": num_trials})
    assert _concurrency(spec, total) == expected


@pytest.mark.parametrize("total", [{"CPU": 2.0}, {"CPU": 64.0, "GPU": 8.0}])
def test_max_concurrent_wins_when_set(total: dict) -> None:
    spec = _spec(resources={"cpu": 1}, search={"num_trials": 16, "max_concurrent": 3})
    assert _concurrency(spec, total) == 3


# --------------------------------------------------------------------------------------------------- _searcher


def _searched(spec) -> dict:
    return to_optuna(spec.search.space)[0]


def test_searcher_is_none_when_nothing_is_searched() -> None:
    spec = _spec()
    assert _searcher(spec, {}) is None
    fixed_only = _spec(search={"space": {"lora.r": 8}})
    assert _searched(fixed_only) == {}
    assert _searcher(fixed_only, _searched(fixed_only)) is None


def test_penalized_searcher_maximizes_the_objective() -> None:
    spec = _spec(search={"space": SPACE})
    s = _searcher(spec, _searched(spec))
    assert isinstance(s, OptunaSearch)
    assert (s.metric, s.mode) == ("objective", "max")
    assert s._ot_study.directions == [optuna.study.StudyDirection.MAXIMIZE]


@pytest.mark.parametrize(
    ("direction", "study_dirs"),
    [("max", ["MAXIMIZE", "MINIMIZE"]), ("min", ["MINIMIZE", "MINIMIZE"])],
)
def test_pareto_searcher_trades_task_against_forgetting(direction: str, study_dirs: list[str]) -> None:
    spec = _spec(
        objective={"mode": "pareto", "metric": "task/exact_match", "direction": direction},
        search={"space": SPACE, "sampler": "nsga2"},
    )
    s = _searcher(spec, _searched(spec))
    assert s.metric == ["task/exact_match", "forget/delta"]
    assert s.mode == [direction, "min"]
    assert s._ot_study.directions == [optuna.study.StudyDirection[d] for d in study_dirs]


def _seed_state(seed: int) -> tuple:
    return np.random.RandomState(seed).get_state()


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
    ],
)
def test_sampler_follows_the_spec_with_its_seed(sampler: str, cls: type) -> None:
    spec = _spec(search={"space": SPACE, "sampler": sampler, "seed": 7})
    s = _searcher(spec, _searched(spec))
    assert type(s._sampler) is cls
    assert s._ot_study.sampler is s._sampler
    assert _same_state(s._sampler._rng.rng.get_state(), _seed_state(7))
    assert not _same_state(s._sampler._rng.rng.get_state(), _seed_state(8))


def test_tpe_sampler_settings() -> None:
    spec = _spec(search={"space": SPACE, "sampler": "tpe", "n_startup_trials": 5})
    sampler = _searcher(spec, _searched(spec))._sampler
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._constant_liar) == (5, True, True)


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2"])
def test_the_seed_makes_suggestions_reproducible(sampler: str) -> None:
    def first_configs(seed: int) -> list[dict]:
        spec = _spec(search={"space": SPACE, "sampler": sampler, "seed": seed})
        s = _searcher(spec, _searched(spec))
        return [s.suggest(f"t{i}") for i in range(3)]

    a = first_configs(3)
    assert a == first_configs(3)
    assert a != first_configs(4)
    for cfg in a:
        assert set(cfg) == {"train.lr", "lora.r"}
        assert 1e-4 <= cfg["train.lr"] <= 1e-2 and cfg["lora.r"] in (4, 8, 16)


# -------------------------------------------------------------------------------------------------- importance


def _trials(n: int) -> list[dict]:
    """The objective falls with log10(lr); lora.r alternates and moves it by a hair."""
    rows = []
    for i in range(n):
        lr = 1e-4 * 100 ** (i / (n - 1))
        r = (4, 8, 16)[i % 3]
        rows.append({"params": {"train.lr": lr, "lora.r": r}, "objective": -math.log10(lr) + 0.001 * (i % 3)})
    return rows


def test_importance_finds_the_param_that_drives_the_objective() -> None:
    spec = _spec(search={"space": SPACE})
    imp = importance({"trials": _trials(10)}, spec.search.space)
    assert list(imp) == ["train.lr", "lora.r"]  # most important first
    assert imp["train.lr"] > 0.9 > 0.1 > imp["lora.r"] >= 0
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(isinstance(v, float) for v in imp.values())


def test_importance_is_deterministic() -> None:
    spec = _spec(search={"space": SPACE})
    assert importance({"trials": _trials(10)}, spec.search.space) == importance(
        {"trials": _trials(10)}, spec.search.space
    )


def test_importance_needs_three_finite_trials() -> None:
    spec = _spec(search={"space": SPACE})
    rows = _trials(10)
    for i, r in enumerate(rows[2:]):
        r["objective"] = math.nan if i % 2 else math.inf  # 2 finite trials, the rest NaN or inf
    assert importance({"trials": rows}, spec.search.space) == {}
    assert importance({"trials": _trials(10)[:2]}, spec.search.space) == {}
    assert importance({"trials": []}, spec.search.space) == {}


def test_importance_skips_trials_missing_a_searched_param() -> None:
    spec = _spec(search={"space": SPACE})
    rows = _trials(10)
    for r in rows[2:]:
        del r["params"]["lora.r"]
    assert importance({"trials": rows}, spec.search.space) == {}


def test_importance_is_empty_without_a_searched_value_or_without_variation() -> None:
    assert importance({"trials": _trials(10)}, _spec(search={"space": {"lora.r": 8}}).search.space) == {}
    spec = _spec(search={"space": SPACE})
    flat = [dict(r, objective=0.5) for r in _trials(10)]
    assert importance({"trials": flat}, spec.search.space) == {}


def test_another_ray_on_this_machine_is_counted(tmp_path) -> None:
    """A second local launch is told its cores are shared: each Ray instance runs one gcs_server process."""
    import shutil
    import subprocess

    from gridrun.launch import other_local_rays

    fake = tmp_path / "gcs_server"  # a process named like a Ray GCS server
    shutil.copy("/bin/sleep", fake)
    p = subprocess.Popen([str(fake), "120"])
    try:
        assert p.pid in other_local_rays()
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("[::1]:6379", True),
        ("10.0.0.5:6379", False),
        ("head.cluster.local:6379", False),
        ("ray://127.0.0.1:10001", False),  # Ray Client connects to the host as given
    ],
)
def test_a_cluster_on_loopback_is_joined_on_loopback(address: str, loopback: bool) -> None:
    """Ray swaps a given 127.0.0.1 for the interface address, where a head started on loopback is not found (the
    join retried forever): such an address is joined with Ray's local-only switch on, as a local start is."""
    from gridrun.ray_start import _on_loopback

    assert _on_loopback(address) is loopback


def test_a_ray_client_address_is_refused_in_one_line() -> None:
    """Under Ray Client, Tune runs its controller (and gridrun's tracker, keeper and summary callbacks) on the head:
    the driver would record nothing. Refused before anything starts, saying what to give instead."""
    from gridrun.errors import GridrunError
    from gridrun.validate import check_address

    with pytest.raises(GridrunError) as e:
        check_address("ray://127.0.0.1:10001")
    line = str(e.value)
    assert line.startswith("resources.address: ray://127.0.0.1:10001 is a Ray Client address") and "\n" not in line
    assert "give the head's host:port" in line
    for bad in ("http://10.0.0.5:6379", "10.0.0.5", "head-only"):
        with pytest.raises(GridrunError, match=r"^resources.address: expected host:port"):
            check_address(bad)


def test_local_inputs_are_made_absolute_for_trials_that_run_in_their_own_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray runs each trial in its own trial folder (it changes the working directory there): the README's
    ``--set data.task=./my_chats.jsonl`` named nothing inside a trial. Every local input is made absolute where the
    command runs; builtin names and hub ids stay as they are."""
    import argparse

    from gridrun.cli import _load
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_chats.jsonl").write_text('{"prompt": "hi", "answer": "hello"}\n')
    (tmp_path / "probe.txt").write_text("general text\n")
    (tmp_path / "mc.jsonl").write_text("")
    (tmp_path / "questions.jsonl").write_text("")
    spec_file = ROOT / "search_spaces" / "forgetting.yaml"
    sets = [
        "data.task=./my_chats.jsonl",
        "data.eval=my_chats.jsonl",
        "forgetting.probe=probe.txt",
        'forgetting.mc=[{"benchmark": "custom", "source": "./mc.jsonl"}]',
        "forgetting.measures=[judge]",
        'forgetting.options={"judge": {"url": "http://127.0.0.1:9/v1", "model": "j", "questions": "questions.jsonl"}}',
    ]
    args = argparse.Namespace(spec=str(spec_file), overrides=sets)
    spec = _load(args)
    assert spec.data.task == spec.data.eval == str(tmp_path / "my_chats.jsonl")
    assert spec.forgetting.probe == str(tmp_path / "probe.txt")
    assert spec.forgetting.mc[0].source == str(tmp_path / "mc.jsonl")
    assert spec.forgetting.options["judge"]["questions"] == str(tmp_path / "questions.jsonl")
    assert spec.model.name == "builtin:tiny-general"  # builtin names and hub ids stay as they are
    hub = _load(argparse.Namespace(spec=str(spec_file), overrides=["model.name=Qwen/Qwen2.5-0.5B-Instruct"]))
    assert hub.model.name == "Qwen/Qwen2.5-0.5B-Instruct" and hub.data.task == "builtin:json-format"


def test_the_exit_code_says_when_every_trial_failed(capsys: pytest.CaptureFixture[str]) -> None:
    """0 when a trial finished, 130 when interrupted (resumable), 1 when every trial failed: a CI job running a
    launch whose trials all errored (a data file a worker cannot read) must not pass."""
    from gridrun.cli import _exit_code

    ok, failed = {"status": "TERMINATED"}, {"status": "ERROR"}
    assert _exit_code({"trials": [failed, ok]}) == 0
    assert _exit_code({"trials": [failed, failed], "interrupted": True}) == 130
    assert capsys.readouterr().out == ""
    assert _exit_code({"trials": [failed, failed]}) == 1
    assert capsys.readouterr().out.startswith("gridrun: every trial failed (2)")
    assert _exit_code({"trials": []}) == 0  # nothing ran (a time budget spent before the first trial)


def test_an_input_a_cluster_node_cannot_read_is_one_line_before_anything_runs(ray_cluster: str, tmp_path: Path) -> None:
    """On a cluster each node reads a trial's inputs from its own disk: a data file only the driver has failed in
    every trial (after a model download). Each alive node is asked, by a task pinned there, before anything is
    recorded; a local storage folder too (a marker file made here must be visible there). The session's cluster
    is one node on this machine: a file that exists passes, one that does not is named with the node."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hi", "answer": "{}"}\n')
    code = f"""
import json, ray
from gridrun.errors import GridrunError
from gridrun.ray_start import _loopback_only, check_inputs_on_nodes, local_inputs
from gridrun.spec import load_spec
with _loopback_only():  # the head listens on loopback only: joined there, as gridrun.start_ray joins it
    ray.init(address={ray_cluster!r}, logging_level="ERROR")
out = {{}}
for name, path in (("present", {str(data)!r}), ("absent", {str(tmp_path / "gone.jsonl")!r})):
    sets = [f"data.task={{path}}", "data.eval=null", "tracking.storage={tmp_path / "results"}"]
    spec = load_spec({str(ROOT / "search_spaces" / "forgetting.yaml")!r}, sets)
    out["inputs"] = local_inputs(spec)
    try:
        check_inputs_on_nodes(spec)
        out[name] = "ok"
    except GridrunError as e:
        out[name] = str(e)
print(json.dumps(out))
"""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["present"] == "ok"
    assert out["inputs"] == [["data.task", str(tmp_path / "gone.jsonl")]]
    line = out["absent"]
    assert line.startswith(f"data.task: {tmp_path / 'gone.jsonl'} is not on 1 of 1 Ray nodes (127.0.0.1 (")
    assert "put it on a filesystem every node mounts at that path" in line and "\n" not in line
    # the storage folder was checked the same way (a marker file every node must see), and the marker removed
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == []
