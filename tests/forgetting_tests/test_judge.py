"""``judge``: the rating parser, a judge that is down or talks nonsense (the round's measure fails in one line, the
trial goes on), and a real OpenAI-compatible server — ``transformers serve`` on 127.0.0.1 — as the judge."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forgetting import JudgeBase, JudgeOptions, JudgeUnavailable, judge_answers, parse_rating
from forgetting.judge import JUDGE_PROMPT
from gridrun.metrics import penalized


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("The answer is helpful. Rating: [[7]]", 7.0),
        ("[[10]]", 10.0),
        ("Rating: [[8.5]] and later [[2]]", 8.5),  # the first double-bracketed rating counts
        ("I would give it [6].", 6.0),  # FastChat's fallback: single brackets
        ("[[3]] then [9]", 3.0),  # double brackets win over single ones
        ("Rating: [[11]]", None),  # outside 1-10
        ("Rating: [[0]]", None),
        ("Rating: 7/10", None),  # no brackets: no rating, never a guess
        ("", None),
        ("[[seven]]", None),
    ],
)
def test_parse_rating(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


def test_the_prompt_is_mt_benchs_single_answer_grading_prompt() -> None:
    text = JUDGE_PROMPT.format(question="Q?", answer="A.")
    assert text.startswith("[Instruction]\nPlease act as an impartial judge")
    assert 'strictly following this format: "[[rating]]", for example: "Rating: [[5]]".' in text
    assert text.endswith("[Question]\nQ?\n\n[The Start of Assistant's Answer]\nA.\n[The End of Assistant's Answer]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _judge_spec(tiny_spec, tmp_path: Path, url: str, model: str = "judge", **extra):
    questions = tmp_path / "questions.jsonl"
    # the last question names this test's folder: its content, so the base value's cache key, is new in every
    # run (the user cache outlives a run, and a CI machine keeps it between runs)
    rows = [{"prompt": ["Name a colour.", "And another?"]}, {"prompt": ["Say hello."]}]
    rows.append({"prompt": [f"Count to 3 ({tmp_path.name}, {time.time_ns()})."]})
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = {
        "url": url,
        "model": model,
        "questions": str(questions),
        "max_new_tokens": 8,
        "max_judge_tokens": 12,
        "timeout_s": 120,
        **extra,
    }
    params = {"forgetting.measures": ["judge"], "forgetting.options": {"judge": judge}, "model.quantization": "none"}
    return tiny_spec.with_params(params)


def _options(spec):
    return JudgeOptions.model_validate(spec.forgetting.options["judge"])


def test_a_judge_that_is_down_fails_the_round_in_one_line_not_the_trial(tiny_spec, tmp_path, caplog) -> None:
    """Nothing listens at the judge's address: judge_answers raises one line; in an eval round the judge's
    metrics are left out with a warning, the others are reported, and the objective (the probe is primary) too."""
    from trainables.evaluation import eval_round, setup_eval
    from trainables.qlora_sft import compute_baselines, setup_model

    spec = _judge_spec(tiny_spec, tmp_path, f"http://127.0.0.1:{_free_port()}/v1", timeout_s=5)
    with pytest.raises(JudgeUnavailable) as e:
        judge_answers(_options(spec), ["q"], ["a"])
    assert str(e.value).startswith(f"forgetting.judge: {_options(spec).url} (judge) failed: ")
    assert "\n" not in str(e.value)

    model, tok, _ = setup_model(spec)
    base = compute_baselines(spec, ["probe"])
    base.values["judge"] = JudgeBase(7.0)  # as if the judge had been up at launch
    with caplog.at_level(logging.WARNING, logger="gridrun"):
        m = eval_round(spec, model, tok, setup_eval(spec, tok, base))
    assert not any(k.startswith("forget/judge") for k in m)
    assert m["forget/delta"] == 0.0
    assert m["objective"] == penalized(m[spec.objective.metric], 0.0, 1.0, spec.objective.direction)
    assert "this round reports no forget/judge_* (the trial goes on)" in caplog.text


@pytest.fixture(scope="module")
def served_judge(tiny_model_path: Path):
    """``transformers serve`` (transformers' own OpenAI-compatible server) on 127.0.0.1, serving the builtin tiny
    model from its local folder, offline; ready once uvicorn says it is running."""
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen(
        [str(exe), "serve", str(tiny_model_path), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(300):
            pytest.fail("transformers serve did not start:\n" + "".join(lines)[-3000:])
        yield f"http://127.0.0.1:{port}/v1", str(tiny_model_path)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: The tiny model cannot judge; this steers its greedy reply to "[[7]]..." through the request's generation
#: settings (transformers serve takes them in ``generation_config``), so the wire, the prompt and the parser are
#: tested against a real server. Token ids of the tiny tokenizer: "[" 61, "7" 25, "]" 63.
SAYS_SEVEN = {
    "generation_config": json.dumps(
        {"sequence_bias": [[[61], 30.0], [[61, 61, 25], 100.0], [[25, 63], 100.0], [[63, 63], 100.0]]}
    )
}


@pytest.mark.slow
def test_judged_by_transformers_serve(served_judge, tiny_spec, tmp_path) -> None:
    """The base model's answers judged once (cached), a trial's judged every round: forget/judge_score, _base and
    judge_delta through a real OpenAI-compatible endpoint; an unsteered tiny judge's replies carry no rating, and
    the round's measure fails in one line."""
    from forgetting import cached_baselines
    from trainables.evaluation import eval_round, setup_eval
    from trainables.qlora_sft import compute_baselines, setup_model

    url, name = served_judge
    spec = _judge_spec(tiny_spec, tmp_path, url, name, extra_body=SAYS_SEVEN)
    spec = spec.with_params({"forgetting.primary": "judge"})
    # the user cache (where the tiny model is): the questions file, new in tmp_path, makes the key a fresh one
    base, cached = cached_baselines(spec, compute_baselines)
    assert not cached and base.of("judge") == JudgeBase(7.0)
    assert cached_baselines(spec, compute_baselines) == (base, True)  # judged once
    model, tok, _ = setup_model(spec)
    m = eval_round(spec, model, tok, setup_eval(spec, tok, base))
    assert (m["forget/judge_score"], m["forget/judge_score_base"], m["forget/judge_delta"]) == (7.0, 7.0, 0.0)
    assert m["objective"] == penalized(m[spec.objective.metric], 0.0, 1.0, spec.objective.direction)  # no penalty

    plain = _options(_judge_spec(tiny_spec, tmp_path, url, name))
    with pytest.raises(JudgeUnavailable, match=r"gave a readable \[\[rating\]\] for only \d of 3 answers"):
        judge_answers(plain, ["Name a colour."] * 3, ["Red."] * 3)
