"""SQuAD v1.1 scoring, GSM8K answer extraction, code extraction and scoring."""

from __future__ import annotations

from fractions import Fraction

import pytest

from evaluators.code_exec import CodeExecEvaluator, extract_function
from evaluators.gsm8k import Gsm8kEvaluator, extract_answer, same_number, to_number
from evaluators.squad import SquadEvaluator, exact_match, f1, lenient, normalize, split_numbered
from gridrun.builtin.algo import PROBLEMS
from gridrun.builtin.algo import generate as algo_tasks


# ---- SQuAD v1.1 rules: lowercase, strip punctuation and articles, collapse whitespace; max over golds ----
@pytest.mark.parametrize(
    ("pred", "golds", "em", "f1_"),
    [
        ("The Eiffel Tower", ["Eiffel Tower"], 1.0, 1.0),  # article dropped
        ("eiffel tower!", ["Eiffel  Tower"], 1.0, 1.0),  # case, punctuation, whitespace
        ("in Paris, France", ["Paris"], 0.0, 0.5),  # precision 1/3, recall 1: F1 = 2PR/(P+R) = 0.5
        ("Denver Broncos", ["Broncos", "Denver Broncos"], 1.0, 1.0),  # best over golds
        ("", ["Paris"], 0.0, 0.0),
        ("a", ["the"], 1.0, 0.0),  # both normalize to empty: v1.1 counts EM, but F1 has no overlap to count
        ("Paris Paris", ["Paris"], 0.0, 2 * 0.5 * 1.0 / 1.5),  # repeated tokens count once in the overlap
    ],
)
def test_squad_em_f1(pred: str, golds: list[str], em: float, f1_: float) -> None:
    assert exact_match(pred, golds) == em
    assert f1(pred, golds) == pytest.approx(f1_)


def test_normalize_and_lenient() -> None:
    assert normalize("  The  cat's   hat, an apple! ") == "cats hat apple"
    assert lenient("It is in Paris, France.", ["paris"]) == 1.0
    assert lenient("London", ["Paris"]) == 0.0
    assert lenient("in 1945", ["4"]) == 0.0  # whole tokens, not characters
    assert lenient("the New York Times", ["new york"]) == 1.0


def test_sequential_answers_are_parsed_back_per_question() -> None:
    assert split_numbered("1. dog\n2) Friday\n3: Rome\n", 3) == ["dog", "Friday", "Rome"]
    assert split_numbered("2. only two", 3) == ["", "only two", ""]
    ev = SquadEvaluator()
    ex = [{"answers": [["dog"], ["Friday"]], "format": "sequential", "context_id": 0, "answer": ""}]
    out = ev.score(["1. the dog\n2. monday"], ex)
    assert out["em"] == 0.5 and out["questions_per_context"] == 2


# ---- GSM8K extraction (the cross-check against lm-eval and math-verify is in test_gsm8k_reference.py) ----
@pytest.mark.parametrize(
    ("text", "value", "form"),
    [
        ("so 3+4=<<3+4=7>>7\n#### 7", 7, "hash"),
        ("#### 1,234", 1234, "hash"),
        ("#### -5", -5, "hash"),
        ("#### $18.50", 18.5, "hash"),
        ("The answer is \\boxed{42}.", 42, "boxed"),
        ("\\boxed{3,000}", 3000, "boxed"),
        ("first 12 then 15", 15, "last"),
        ("no number here", None, "none"),
        ("#### 7 and later \\boxed{9}", 7, "hash"),
        ("#### $-5", -5, "hash"),
        ("#### 42\nQuestion: another one\n#### 7", 42, "hash"),  # the model ran on: the first answer counts
        ("\\boxed{\\$18} for 3 bags", 18, "boxed"),
        ("\\boxed{18 \\text{ dollars}} and 3", 18, "boxed"),
        ("\\boxed{18\\%} of 3", 18, "boxed"),
        ("\\boxed{1{,}000} then 3", 1000, "boxed"),
        ("\\boxed{\\frac{3}{4}}", 0.75, "boxed"),
        ("\\boxed{2} or rather \\boxed{3}", 3, "boxed"),
        # large numbers are read whole and exactly
        ("#### 1,500,001", 1500001, "hash"),
        ("#### 123,456,789,012,345,678", 123456789012345678, "hash"),
        # a sign counts only when it touches the number
        ("Final answer - 65", 65, "last"),
        ("The steps:\n- 12 eggs\n- 18", 18, "last"),
        ("the range 3-5", 5, "last"),
        ("COVID-19 cases", 19, "last"),
        ("so x=-4", -4, "last"),
        ("#### - 5", None, "hash"),  # a detached sign right after the marker: no answer rather than a guess
        ("#### \u22125", -5, "hash"),  # U+2212, the minus sign proper
        ("\\boxed{\u221212}", -12, "boxed"),
        ("\\boxed{- 5}", -5, "boxed"),  # LaTeX ignores spaces: no bullets in a box
        ("#### -$5", -5, "hash"),
        # thousands separators only in groups of three; a malformed group is no number, never a partial one
        ("#### 1,23", None, "hash"),
        ("#### 1.234.567", None, "hash"),
        ("the numbers 1,2,3", None, "none"),
        ("version 1.2.3 and then 4", 4, "last"),
        ("\\boxed{3\\,000}", 3000, "boxed"),
        ("\\boxed{1\\ 000\\ 000}", 1000000, "boxed"),
        ("\\boxed{2 3}", None, "boxed"),
        # trailing periods, percent, currency, scale words
        ("It costs $1,250.", 1250, "last"),
        ("It costs $1,250.50.", 1250.5, "last"),
        ("#### 25%", 25, "hash"),
        ("about 40 percent", 40, "last"),
        ("\\boxed{18.}", 18, "boxed"),
        ("#### 1.5 million", 1500000, "hash"),
        ("\\boxed{2.5 \\text{ billion}}", 2500000000, "boxed"),
        # fractions, mixed numbers, powers, scientific notation
        ("#### 3/4", 0.75, "hash"),
        ("#### 2 1/2", 2.5, "hash"),
        ("\\boxed{10^3}", 1000, "boxed"),
        ("\\boxed{2^{10}}", 1024, "boxed"),
        ("\\boxed{1\\frac{1}{2}}", 1.5, "boxed"),
        ("\\boxed{-2 \\dfrac{3}{4}}", -2.75, "boxed"),
        ("\\boxed{\\frac34}", 0.75, "boxed"),
        ("#### 1.5e3", 1500, "hash"),
        ("\\boxed{1.5 \\times 10^{3}}", 1500, "boxed"),
        ("so 10³ grains", 1000, "last"),
        # in a box: a number or no answer, never a guess; the last box is the answer even when unreadable
        ("\\boxed{2+3}", None, "boxed"),
        ("\\boxed{5x}", None, "boxed"),
        ("\\boxed{x = 5}", 5, "boxed"),
        ("\\boxed{\\frac{1}{0}}", None, "boxed"),
        ("\\boxed{9^{9^{9}}}", None, "boxed"),
        ("\\boxed{10^{100000}}", None, "boxed"),  # an exponent past 1000 is not computed
        ("\\boxed{7}, or rather \\boxed{\\sqrt{50}}", None, "boxed"),
        ("\\boxed{7}, or rather \\boxed{12", None, "boxed"),  # cut off: the earlier box was superseded
        ("#### Step 1\nThus \\boxed{4}", 4, "boxed"),  # a Markdown heading, not an answer marker
    ],
)
def test_gsm8k_extraction(text: str, value, form: str) -> None:
    assert extract_answer(text) == (value, form)


def test_gsm8k_values_are_exact() -> None:
    assert extract_answer("#### 0.1")[0] == Fraction(1, 10)
    assert extract_answer("\\boxed{\\frac{1}{3}}")[0] == Fraction(1, 3)
    assert to_number(" -1,000.5 ") == Fraction(-2001, 2)
    assert to_number("1,23") is None and to_number("12 apples") is None


def test_same_number_integers_exact_decimals_tight() -> None:
    assert not same_number(Fraction(1500001), Fraction(1500000))
    assert not same_number(Fraction(10**18 + 1), Fraction(10**18))
    assert not same_number(Fraction(3000000001, 1000), Fraction(3000000))  # a non-integer never equals an integer
    assert same_number(Fraction(6666666667, 10**10), Fraction(2, 3))  # a repeating decimal written out
    assert not same_number(Fraction(667, 1000), Fraction(2, 3))
    assert same_number(Fraction(37, 2), Fraction(185, 10))


def test_gsm8k_accuracy() -> None:
    ev = Gsm8kEvaluator()
    ex = [{"answer": "... #### 18"}, {"answer": "#### 1,000"}, {"answer": "#### 3"}]
    out = ev.score(["#### 18", "The answer is \\boxed{1000}", "I think 4"], ex)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["format_hash"] == pytest.approx(1 / 3)


def test_gsm8k_accuracy_large_and_unreadable() -> None:
    ev = Gsm8kEvaluator()
    ex = [{"answer": "#### 1,500,000"}] * 4
    out = ev.score(["#### 1,500,001", "#### 1500000", "#### 1,5", "\\boxed{1.5 \\text{ million}}"], ex)
    assert out["accuracy"] == 0.5  # the near miss is wrong; 1,500,000 written two ways is right
    assert out["extracted"] == 0.75 and out["format_hash"] == 0.75 and out["format_boxed"] == 0.25


# ---- code extraction ----
def test_extract_function_from_fenced_and_chatty_output() -> None:
    text = "Sure! Here it is:\n```python\nimport math\ndef f(x):\n    return math.sqrt(x)\n```\nHope it helps."
    code = extract_function(text, "f")
    assert code is not None and "import math" in code and "Hope" not in code
    assert extract_function("def f(x):\n    return x\nThis explains it", "f") == "def f(x):\n    return x\n"
    assert extract_function("def g(x): return x", "f") is None


def test_every_reference_solution_passes_and_types_are_reported() -> None:
    ex = algo_tasks(len(PROBLEMS) * 2, seed=3, split="eval")
    out = CodeExecEvaluator().score([e["answer"] for e in ex], ex)
    assert out["pass_rate"] == 1.0 and out["partial_credit"] == 1.0
    assert {f"pass_rate_{t}" for t in PROBLEMS} <= set(out)
    assert any(k.startswith("pass_rate_d") for k in out)


def test_train_and_eval_problems_differ() -> None:
    train = {str(e["cases"]) for e in algo_tasks(44, seed=0, split="train")}
    ev = {str(e["cases"]) for e in algo_tasks(44, seed=0, split="eval")}
    assert len(train & ev) < 5  # a few tiny inputs can coincide; the streams are independent


def test_evaluator_goes_on_after_hostile_completions() -> None:
    ex = algo_tasks(3, seed=0, split="eval")
    fn = ex[0]["function"]
    hostile = [f"def {fn}(*a):\n    while True: pass\n", "```python\nimport os\nos.fork()\n```", ex[2]["answer"]]
    ev = CodeExecEvaluator(wall_s=3, cpu_s=1)
    out = ev.score(hostile, ex)
    assert out["pass_rate"] == pytest.approx(1 / 3) and out["timeouts"] == pytest.approx(1 / 3)


def test_squad_costs_are_per_context() -> None:
    """Batch format answers a context with one prompt per question; its cost is their sum (the study compares
    formats on prompt tokens, generated tokens and latency per context)."""

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    ev = SquadEvaluator()
    ev_examples = [
        {"prompt": "ctx q1", "answer": "a", "answers": [["a"]], "format": "batch", "context_id": 0},
        {"prompt": "ctx q2", "answer": "b", "answers": [["b"]], "format": "batch", "context_id": 0},
    ]
    from evaluators import Generator

    class Canned(Generator):  # the evaluator asks its generator, whatever the backend
        def generate(self, model, tokenizer, prompts, settings):  # type: ignore[no-untyped-def]
            return ["a", "b c"]

    ev.generator = Canned()
    out = ev.evaluate(None, Tok(), ev_examples)
    assert out["prompt_tokens"] == 4 and out["gen_tokens"] == 3 and out["questions_per_context"] == 2
    assert out["em"] == 0.5


def test_code_exec_options_are_checked_and_isolation_is_required(monkeypatch) -> None:
    import evaluators.code_exec as ce
    from gridrun.errors import GridrunError

    assert CodeExecEvaluator(cpu_s=2.0).limits.cpu_s == 2  # a whole float is fine
    with pytest.raises(ValueError, match="cpu_s: a whole number"):
        CodeExecEvaluator(cpu_s=2.5)  # setrlimit takes whole seconds: every case would have crashed
    monkeypatch.setattr(ce, "isolation_layers", lambda: ("netns", "pidns"))
    with pytest.raises(ValueError, match="no bwrap and no userns and no unprivileged and no seccomp"):
        CodeExecEvaluator()
    assert CodeExecEvaluator(isolation="best_effort").limits.wall_s == 5.0
    from evaluators import GenerationSettings, build_evaluator

    with pytest.raises(GridrunError, match="isolation: 'strict' or 'best_effort'"):
        build_evaluator("code_exec", GenerationSettings(), {"isolation": "loose"})
