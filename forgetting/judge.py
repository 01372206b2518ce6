"""``judge``: chat answers rated 1–10 by a judge model, MT-Bench style (study 001 measured forgetting this way).

The trial's model answers each question (MT-Bench's first turns by default, rendered in the trial's template,
greedy); a judge model behind any OpenAI-compatible chat endpoint (vLLM, TGI, ``transformers serve``, a hosted
API; called with the ``openai`` client) rates each answer with MT-Bench's single-answer grading prompt
(:data:`JUDGE_PROMPT`), and the rating is read from its ``[[7]]`` (as FastChat reads it, :func:`parse_rating`).
The base model's answers are judged once and cached. A judge that is down, or whose replies carry no rating for
most answers, fails that round's measure in one line (a warning; the round's ``forget/judge_*`` are left out),
never the trial.
"""

from __future__ import annotations

import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forgetting._base import Measure, TaskPrompts, register_measure
from forgetting.baseline import fingerprint
from gridrun.errors import GridrunError

if TYPE_CHECKING:
    from gridrun.spec import ExperimentSpec, JudgeSpec

__all__ = ["JUDGE_PROMPT", "JudgeBase", "JudgeMeasure", "JudgeUnavailable", "judge_answers", "parse_rating"]

log = logging.getLogger("gridrun")

#: MT-Bench's single-answer grading prompt ("single-v1" in FastChat's ``judge_prompts.jsonl``), word for word.
JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    'you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for '
    'example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)

_DOUBLE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SINGLE = re.compile(r"\[(\d+\.?\d*)\]")
#: A round counts only if at least this share of answers got a readable rating.
MIN_RATED = 0.5


class JudgeUnavailable(GridrunError):
    """The judge could not rate this round's answers (down, refused, or replied without ratings)."""


def parse_rating(reply: str) -> float | None:
    """The 1–10 rating in a judge's reply: the first ``[[x]]``, else the first ``[x]`` (FastChat's two patterns);
    None when there is none or it is outside 1–10."""
    for pattern in (_DOUBLE, _SINGLE):
        m = pattern.search(reply or "")
        if m:
            value = float(m.group(1))
            return value if 1 <= value <= 10 and math.isfinite(value) else None
    return None


def _client(judge: JudgeSpec) -> Any:
    from openai import OpenAI

    key = os.environ.get(judge.api_key_env, "") if judge.api_key_env else ""
    return OpenAI(base_url=judge.url, api_key=key or "none", timeout=judge.timeout_s, max_retries=1)


def judge_answers(judge: JudgeSpec, questions: list[str], answers: list[str], workers: int = 4) -> float:
    """The mean rating of ``answers`` to ``questions`` (one line, :class:`JudgeUnavailable`, if the judge fails)."""
    from openai import OpenAIError

    client = _client(judge)

    def rate(pair: tuple[str, str]) -> float | None:
        reply = client.chat.completions.create(
            model=judge.model,
            messages=[
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_PROMPT.format(question=pair[0], answer=pair[1])},
            ],
            temperature=0.0,
            max_tokens=judge.max_judge_tokens,
            extra_body=judge.extra_body or None,
        )
        return parse_rating(reply.choices[0].message.content or "")

    try:
        with ThreadPoolExecutor(workers) as pool:
            ratings = list(pool.map(rate, zip(questions, answers, strict=True)))
    except (OpenAIError, OSError) as e:
        raise JudgeUnavailable(
            f"forgetting.judge: {judge.url} ({judge.model}) failed: {type(e).__name__}: {e}"
        ) from None
    rated = [r for r in ratings if r is not None]
    if len(rated) < MIN_RATED * len(ratings) or not rated:
        raise JudgeUnavailable(
            f"forgetting.judge: {judge.model} at {judge.url} gave a readable [[rating]] for only "
            f"{len(rated)} of {len(ratings)} answers"
        )
    return sum(rated) / len(rated)


@dataclass(frozen=True)
class JudgeBase:
    """The base model's mean rating."""

    score: float


@register_measure("judge")
class JudgeMeasure(Measure):
    """``forget/judge_score`` (and ``_base``) and ``forget/judge_delta``, the rating's relative drop from the base
    model's (as ``forget/mc_delta`` is the benchmarks')."""

    metric = "forget/judge_delta"
    Base = JudgeBase

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        assert spec.forgetting.judge is not None, "enabled() checks it"
        self.judge = spec.forgetting.judge
        self.questions: list[str] = []
        self.prompts: list[str] = []

    @classmethod
    def enabled(cls, spec: ExperimentSpec) -> bool:
        return spec.forgetting.judge is not None

    def base_key(self) -> dict[str, Any]:
        j = self.judge
        return {
            "questions": [fingerprint(j.questions), j.split, j.revision, j.question_field, j.limit],
            "judge": j.model,  # the endpoint may move; the judge model is what changes the number
            "answers": [j.max_new_tokens, self.spec.data.template],
        }

    def setup(self, tokenizer: Any, task_prompts: TaskPrompts) -> None:
        from forgetting.data import load_questions
        from trainables.data import render_prompt

        self.questions = load_questions(self.judge)
        self.prompts = [render_prompt(tokenizer, q, self.spec.data.template) for q in self.questions]

    def _answers(self, model: Any, tokenizer: Any) -> list[str]:
        from evaluators import GenerationSettings, generate

        settings = GenerationSettings(
            max_new_tokens=self.judge.max_new_tokens, batch_size=self.spec.evaluate.batch_size
        )
        return [a.strip() for a in generate(model, tokenizer, self.prompts, settings)]

    def compute_base(self, model: Any, tokenizer: Any) -> JudgeBase:
        return JudgeBase(judge_answers(self.judge, self.questions, self._answers(model, tokenizer)))

    def score(self, model: Any, tokenizer: Any, base: JudgeBase) -> dict[str, float]:
        try:
            score = judge_answers(self.judge, self.questions, self._answers(model, tokenizer))
        except JudgeUnavailable as e:
            log.warning("%s; this round reports no forget/judge_* (the trial goes on)", e)
            return {}
        delta = (base.score - score) / base.score if base.score > 0 else 0.0
        return {"forget/judge_score": score, "forget/judge_score_base": base.score, self.metric: delta}
