"""What an eval round holds on the GPU beyond the trial's weights: its largest step (the probe, generation, the
judge's answers, the answer loss, multiple choice, the KL), and how many new tokens each generating part may take
(:func:`generation_budgets`, which the vLLM engine's plan reads too). Pure arithmetic, as :mod:`gridrun.memory`,
whose trial estimate adds it."""

from __future__ import annotations

from gridrun.losses import CHUNK, KL_CHUNK
from gridrun.model_shape import ModelShape
from gridrun.spec import ExperimentSpec

__all__ = ["JUDGE_MAX_NEW_TOKENS", "SCORING_EVALUATORS", "eval_bytes", "generation_budgets"]

#: forgetting.probe.probe_loss's, forgetting.mc.loglikelihoods' and forgetting.kl.mean_forward_kl's batches (fixed
#: in the code, not the spec).
PROBE_BATCH = 16
MC_BATCH = 32
KL_BATCH = 8
#: Assumed longest multiple-choice request (context + choice): HellaSwag's, ARC's and WinoGrande's fit in it.
MC_TOKENS = 256
#: Evaluators that score teacher-forced answers instead of generating (no KV cache, full-length logits).
SCORING_EVALUATORS = frozenset({"answer_loss"})
#: New tokens the judge's answers may take where ``forgetting.options.judge.max_new_tokens`` is not set
#: (``forgetting.judge.JudgeOptions`` defaults to it: the measure and the memory plans read one number).
JUDGE_MAX_NEW_TOKENS = 256


def _scoring_bytes(shape: ModelShape, tokens: int, act: int, forward: int) -> int:
    """A scoring forward of ``tokens`` positions, every one scored at worst (gridrun.losses.target_logprobs): the
    final hidden states with the token ids, targets and the result (int64, int64, fp32), then the larger of the
    decoder's working set and the head's: the scored rows, their indices, targets and values, and one chunk's
    logits in float32 with their log_softmax (a bf16 head's own logits are freed once cast)."""
    chunk = min(CHUNK, tokens) * shape.vocab * 8
    return tokens * (shape.hidden * act + 20) + max(forward, tokens * (shape.hidden * act + 28) + chunk)


def generation_budgets(spec: ExperimentSpec) -> dict[str, int]:
    """New tokens each generating part of an eval round may take, by name: the task's evaluators
    (``evaluate.max_new_tokens``, where one of them generates) and the judge's answers (``forgetting.measures``
    holding ``judge``: its ``max_new_tokens``). Their prompts are assumed no longer than ``data.max_seq_len``."""
    out: dict[str, int] = {}
    if any(e not in SCORING_EVALUATORS for e in spec.evaluate.evaluators):
        out["generation"] = spec.evaluate.max_new_tokens
    if "judge" in spec.forgetting.measures:
        options = spec.forgetting.options.get("judge")
        given = options.get("max_new_tokens", JUDGE_MAX_NEW_TOKENS) if isinstance(options, dict) else None
        # a value that is no count is validate's to refuse (forgetting.options.judge.max_new_tokens), not this sum's
        out["judge"] = given if isinstance(given, int) and given > 0 else JUDGE_MAX_NEW_TOKENS
    return out


def eval_bytes(shape: ModelShape, spec: ExperimentSpec, act: int) -> tuple[int, str]:
    """The eval round's largest working set (no gradients), beyond the static weights, and its name; the
    logits are in ``act``'s dtype too (lm_head is fp32 under nf4/int8)."""
    h, i, v, layers = shape.hidden, shape.intermediate, shape.vocab, shape.layers
    kv = 2 * shape.kv_heads * shape.head_dim * act  # one token's K and V in one layer (fp32 under nf4/int8)

    def forward(tokens: int) -> int:  # one layer's working set without autograd (MLP intermediates dominate)
        return tokens * (4 * i + 6 * h) * act

    def scoring(tokens: int) -> int:
        return _scoring_bytes(shape, tokens, act, forward(tokens))

    ev, fg, seq = spec.evaluate, spec.forgetting, spec.data.max_seq_len
    steps = {"probe": scoring(PROBE_BATCH * fg.seq_len)}
    # with evaluate.backend vllm the engine generates, in memory of its own (gridrun.vllm_memory)
    for name, new_tokens in generation_budgets(spec).items() if ev.backend != "vllm" else ():
        # prompts assumed no longer than training examples; greedy decoding keeps only the last position's logits;
        # the judge's answers are generated in batches of evaluate.batch_size too
        length = seq + new_tokens
        cache, mask = length * layers * kv, seq * length * act  # the padding mask made additive, one layer's
        steps[name] = ev.batch_size * (cache + mask) + forward(ev.batch_size * seq)
    if SCORING_EVALUATORS & set(ev.evaluators):
        steps["answer_loss"] = scoring(ev.batch_size * seq)
    if fg.mc:
        steps["mc"] = scoring(MC_BATCH * MC_TOKENS)
    if "kl" in fg.measures:  # base and tuned hidden states and rows, one chunk of both in float64 (five copies)
        tokens = KL_BATCH * max(seq, fg.seq_len)
        # the head computes in float32 here (losses._head): a 16-bit head's weight is upcast once, logits are float32
        head32 = 0 if act == 4 else v * h * 4
        steps["kl"] = tokens * 2 * (2 * h * act + 8) + head32 + max(forward(tokens), min(KL_CHUNK, tokens) * v * 44)
    kind = max(steps, key=lambda k: steps[k])
    return steps[kind], kind
