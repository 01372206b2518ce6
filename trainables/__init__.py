"""Ray Tune trainables (setup → train → report) and the data, model and checkpoint-state helpers they call."""

from trainables.qlora_sft import eval_round, evaluate_adapter, qlora_sft, run

__all__ = ["eval_round", "evaluate_adapter", "qlora_sft", "run"]
