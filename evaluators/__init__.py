"""Task evaluators behind one small interface, looked up by name.

``evaluate(model, tokenizer, examples) -> dict[str, float]``; generation settings come from the spec, completions
from the trial's ``Generator`` (``evaluate.backend``: hf | vllm).
"""

from evaluators._base import (
    EVALUATORS,
    Evaluator,
    build_evaluator,
    check_evaluator_names,
    register_evaluator,
)
from evaluators.answer_loss import AnswerLossEvaluator
from evaluators.code_exec import CodeExecEvaluator
from evaluators.generation import (
    BACKENDS,
    GenerationSettings,
    Generator,
    HFGenerator,
    build_generator,
    check_backend,
    generate,
)
from evaluators.gsm8k import Gsm8kEvaluator
from evaluators.json_format import JsonFormatEvaluator
from evaluators.squad import SquadEvaluator

__all__ = [
    "BACKENDS",
    "EVALUATORS",
    "AnswerLossEvaluator",
    "CodeExecEvaluator",
    "Evaluator",
    "GenerationSettings",
    "Generator",
    "Gsm8kEvaluator",
    "HFGenerator",
    "JsonFormatEvaluator",
    "SquadEvaluator",
    "build_evaluator",
    "build_generator",
    "check_backend",
    "check_evaluator_names",
    "generate",
    "register_evaluator",
]
