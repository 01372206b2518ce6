"""Task evaluators behind one small interface, looked up by name.

``evaluate(model, tokenizer, examples) -> dict[str, float]``; generation settings come from the spec.
"""

from evaluators._base import (
    EVALUATORS,
    Evaluator,
    GenerationSettings,
    build_evaluator,
    check_evaluator_names,
    generate,
    register_evaluator,
)
from evaluators.answer_loss import AnswerLossEvaluator
from evaluators.code_exec import CodeExecEvaluator
from evaluators.gsm8k import Gsm8kEvaluator
from evaluators.json_format import JsonFormatEvaluator
from evaluators.squad import SquadEvaluator

__all__ = [
    "EVALUATORS",
    "AnswerLossEvaluator",
    "CodeExecEvaluator",
    "Evaluator",
    "GenerationSettings",
    "Gsm8kEvaluator",
    "JsonFormatEvaluator",
    "SquadEvaluator",
    "build_evaluator",
    "check_evaluator_names",
    "generate",
    "register_evaluator",
]
