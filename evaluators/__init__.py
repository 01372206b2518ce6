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
from evaluators.json_format import JsonFormatEvaluator
from evaluators.probe import probe_loss

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "GenerationSettings",
    "JsonFormatEvaluator",
    "build_evaluator",
    "check_evaluator_names",
    "generate",
    "probe_loss",
    "register_evaluator",
]
