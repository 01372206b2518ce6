"""Ray Tune trainables (setup → train → report) and the data, model and checkpoint-state helpers they call."""

from trainables.evaluation import eval_round
from trainables.model import quiet_bnb_kernel_notice
from trainables.qlora_sft import evaluate_adapter, qlora_sft, run

# A trial's worker imports this package first (unpickling the trainable): silence bitsandbytes' kernel notice
# there, before anything can import bitsandbytes.
quiet_bnb_kernel_notice()

__all__ = ["eval_round", "evaluate_adapter", "qlora_sft", "run"]
