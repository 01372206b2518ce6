"""The typed experiment schema: one pydantic section per concern, unknown keys rejected.

Every field carries a description that doubles as CLI help and error text. ``validate_dict`` turns plain data
into an :class:`ExperimentSpec` (unknown keys, types), raising :class:`~gridrun.errors.SpecError` with one line
naming the field path and the bad value; loading YAML and the search-space rules live in ``gridrun.spec.load``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gridrun.errors import SpecError
from gridrun.spec.base import Section as _Section
from gridrun.spec.forgetting import MC_BENCHMARKS, ForgettingSpec, McSpec
from gridrun.spec.paths import set_path
from gridrun.spec.search import ObjectiveSpec, SchedulerSpec, SearchSpec

__all__ = [
    "MC_BENCHMARKS",
    "CheckpointSpec",
    "DataSpec",
    "EvaluateSpec",
    "ExperimentSpec",
    "ForgettingSpec",
    "LoraSpec",
    "McSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "ResourcesSpec",
    "SchedulerSpec",
    "SearchSpec",
    "TrackingSpec",
    "TrainSpec",
    "validate_dict",
]


class ModelSpec(_Section):
    """Base model to fine-tune."""

    name: str = Field("builtin:tiny-general", description="builtin:<name>, a hub id, or a local model folder")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to pin")
    quantization: Literal["nf4", "int8", "none"] = Field(
        "nf4", description="how the frozen base weights are loaded: bitsandbytes nf4 (QLoRA), int8, or none"
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the frozen base is loaded and computed in: forwards run under torch.autocast in it, "
        "float16 with a GradScaler; LoRA weights and AdamW state stay float32. auto: bfloat16 on a GPU that has "
        "it, float16 on one that does not, float32 on CPU",
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto",
        description="attention kernel (transformers' attn_implementation); auto: flash_attention_2 where the "
        "flash_attn package is installed and a GPU computes in bfloat16/float16, else sdpa. eager keeps every "
        "layer's [batch, heads, seq, seq] scores",
    )
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory on large models (non-reentrant activation checkpointing)"
    )


class LoraSpec(_Section):
    """LoRA adapter shape (peft.LoraConfig)."""

    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="module names that get adapters",
    )


class DataSpec(_Section):
    """Task data: where it comes from, how it becomes prompt/answer pairs, how much of it is used."""

    task: str = Field(
        "builtin:json-format", description="builtin:<name>, a hub dataset id, or a JSON/JSONL/Parquet file"
    )
    eval: str | None = Field(
        None, description="separate evaluation source (same forms as task); builtin tasks generate their own"
    )
    subset: str | None = Field(None, description="hub dataset configuration name (e.g. 'main' for openai/gsm8k)")
    revision: str | None = Field(None, description="hub dataset revision (branch, tag or commit) to pin")
    adapter: Literal["none", "squad"] = Field(
        "none",
        description="record converter: 'squad' turns SQuAD rows (hub: context/question/answers, or a v1.1 JSON "
        "file) into batch or sequential QA examples (options.prompt_format, options.questions_per_context)",
    )
    split: str = Field("train", description="hub dataset split used for training")
    eval_split: str = Field("test", description="hub dataset split used for evaluation")
    prompt_field: str = Field("prompt", description="record field holding the prompt")
    answer_field: str = Field("answer", description="record field holding the target answer")
    messages_field: str | None = Field(
        None,
        description="record field holding a chat (list of {role, content}); the last assistant turn is the answer, "
        "the turns before it the prompt (needs template: chat). Replaces prompt_field/answer_field.",
    )
    template: str = Field(
        "chat",
        description="'chat' renders the prompt with the tokenizer's chat template; any other string is a "
        "format string with {prompt}. The same template is used for training and evaluation.",
    )
    train_size: int = Field(512, gt=0, description="examples generated by a builtin task (ignored for files)")
    eval_size: int = Field(32, gt=0, description="evaluation examples used each eval round")
    sample_ratio: float = Field(
        1.0, gt=0, le=1, description="fraction of the training set used, a seeded subset; searchable"
    )
    max_seq_len: int = Field(
        256,
        gt=8,
        description="most prompt+answer+EOS tokens per training example; a longer example is dropped, never cut "
        "(a cut answer loses its EOS), and counted as data/dropped_too_long",
    )
    max_bad_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="malformed training rows (not JSON, missing or non-text fields, a chat not ending with the "
        "assistant) are skipped and counted as data/bad_rows; above this fraction of the rows the trial fails",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options for a builtin task generator")

    @field_validator("template")
    @classmethod
    def _template_has_prompt(cls, v: str) -> str:
        if v != "chat" and "{prompt}" not in v:
            raise ValueError("template must be 'chat' or a format string containing {prompt}")
        if v != "chat":
            try:
                v.format(prompt="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"template has a brace field other than {{prompt}} ({e!r}); write literal braces as {{{{ and }}}}"
                ) from None
        return v


class TrainSpec(_Section):
    """Optimisation."""

    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the (subsampled) training set")
    batch_size: int = Field(8, gt=0, description="examples per micro-batch (per device)")
    grad_accum: int = Field(1, gt=0, description="micro-batches accumulated per optimizer step")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of steps spent warming up")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping (0 disables)")
    eval_every: int = Field(16, gt=0, description="optimizer steps between eval rounds (one more at the end)")
    seed: int = Field(0, ge=0, lt=2**32, description="seed for LoRA init, data order, dropout")
    group_by_length: bool = Field(
        True,
        description="batch examples of similar length together (transformers' length-grouped order), so less "
        "padding is computed (1.4x training throughput on the demo); the order stays seeded and exactly resumable; "
        "false: a plain shuffle",
    )
    padding_free: bool | Literal["auto"] = Field(
        "auto",
        description="pack each micro-batch into one row with position ids restarting per example (no pad token "
        "computed; same loss and gradients); auto: on CUDA, where it is faster, not on CPU, where it is not",
    )


class EvaluateSpec(_Section):
    """Task evaluators and generation settings (shared by all evaluators)."""

    evaluators: list[str] = Field(
        default_factory=lambda: ["json_format"],
        min_length=1,
        description="registered evaluator names run each eval round",
    )
    max_new_tokens: int = Field(64, gt=0, description="generation budget per prompt")
    batch_size: int = Field(32, gt=0, description="prompts generated together")
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="what generates completions: hf (transformers' generate on the trial's model, length-sorted "
        "batches) or vllm (the optional extra gridrun[vllm]: the base loaded once per trial in the trial's GPU "
        "share, each eval round's adapter served as a LoRA request; needs a GPU)",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-evaluator options, keyed by evaluator name"
    )


class ResourcesSpec(_Section):
    """What one trial gets; fractions of a GPU pack several trials on one device."""

    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also torch threads)")
    gpu: float | Literal["auto"] = Field(
        0.0,
        description="GPUs per trial; 0.25 packs four trials on one GPU; auto: the smallest 1/k of a GPU that holds "
        "a trial's estimated peak memory with 20% headroom (no GPU: 0, CPU trials)",
    )
    gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory of one GPU in GiB (80 for an H100 80GB): what `gridrun validate` checks a trial's "
        "estimated memory against without a GPU; default: this machine's GPU, or the cluster's at launch",
    )
    address: str | None = Field(None, description="Ray cluster address (the head's host:port, or auto); none = local")
    max_failures: int = Field(
        3,
        ge=0,
        description="times a trial is retried from its last checkpoint when its worker or node dies or it raises "
        "(same MLflow run, no duplicate steps; the summary says so); 0 = a failed trial ends as ERROR",
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_value(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            gpu = float(v)
        except (TypeError, ValueError):
            raise ValueError("expected a number of GPUs per trial (0.25 packs four on one GPU) or auto") from None
        if gpu < 0:
            raise ValueError("a number of GPUs per trial is at least 0")
        return gpu

    @model_validator(mode="after")
    def _gpu_fraction(self) -> ResourcesSpec:
        if self.gpu != "auto" and self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: {self.gpu} — more than one GPU per trial must be a whole number")
        return self


class CheckpointSpec(_Section):
    """Checkpoint retention per trial."""

    num_to_keep: int = Field(
        2,
        gt=0,
        description="best checkpoints by objective kept per trial; the latest, and any an experiment snapshot "
        "names (what `gridrun resume` restores from), are kept as well",
    )


class TrackingSpec(_Section):
    """MLflow and result storage."""

    uri: str = Field("sqlite:///mlruns.db", description="MLflow tracking URI (sqlite file, folder, or http server)")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the spec name)")
    storage: str = Field(
        "gridrun_results",
        description="where Ray Tune keeps trials and checkpoints: a local folder or a URI (s3://, gs://, abfs://, "
        "file://); a cluster needs one every node reaches",
    )
    log_adapters: bool = Field(True, description="upload each trial's final adapter as an MLflow artifact")


class ExperimentSpec(_Section):
    """One experiment: a model, a task, a search over its knobs, and where results go."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="experiment name")
    description: str = Field("", description="free text shown in MLflow")
    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _modes_fit(self) -> ExperimentSpec:
        if self.objective.mode == "constrained" and self.forgetting.budget is None:
            raise ValueError("objective.mode constrained needs forgetting.budget (the most forgetting allowed)")
        if self.objective.mode == "pareto" and self.scheduler.type == "asha" and self.scheduler.brackets > 1:
            raise ValueError("scheduler.brackets: MOASHA (objective.mode pareto) runs one bracket; set brackets: 1")
        return self

    def trial_dict(self) -> dict[str, Any]:
        """The spec as plain data, the search space left out (what a trial needs)."""
        d = self.model_dump(mode="json")
        d.pop("search")
        return d

    def with_params(self, params: dict[str, Any]) -> ExperimentSpec:
        """A copy with dotted-path values substituted (one trial's sampled config), validated."""
        raw = self.model_dump(mode="json")
        for path, value in params.items():
            set_path(raw, path, value)
        return validate_dict(raw)


def validate_dict(raw: dict[str, Any]) -> ExperimentSpec:
    """Plain data → :class:`ExperimentSpec`: unknown keys, then types and values (no search-space rules)."""
    _check_unknown_keys(raw, ExperimentSpec, "")
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_one_line(e)) from None
    except ValueError as e:  # raised by parse_distribution inside a before-validator
        raise SpecError(str(e)) from None


def _check_unknown_keys(raw: Any, model: type[BaseModel], prefix: str) -> None:
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(fields)
            section = prefix.rstrip(".") or "top level"
            raise SpecError(f"unknown key '{where}' in {section}; known keys: {known}")
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_unknown_keys(value, sub, where + ".")


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "spec"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return f"{loc}: required field is missing"
    bad = first.get("input")
    if isinstance(bad, dict):
        return f"{loc}: {msg}"
    return f"{loc}: {msg} (got {bad!r})"
