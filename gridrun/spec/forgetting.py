"""The forgetting section: the general-text probe and the multiple-choice benchmarks, compared with the base
model's cached scores."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gridrun.spec.base import Section as _Section

__all__ = ["MC_BENCHMARKS", "ForgettingSpec", "McSpec"]


#: Standard multiple-choice benchmarks for forgetting (Biderman et al. 2024), scored as lm-evaluation-harness
#: scores them; ``custom`` is a file, folder or builtin set of question/choices/answer items.
MC_BENCHMARKS = ("hellaswag", "arc_challenge", "arc_easy", "winogrande", "custom")


class McSpec(_Section):
    """One multiple-choice benchmark of the forgetting measure."""

    benchmark: Literal["hellaswag", "arc_challenge", "arc_easy", "winogrande", "custom"] = Field(
        "custom", description="hellaswag, arc_challenge, arc_easy, winogrande (their hub columns), or custom"
    )
    source: str | None = Field(
        None,
        description="hub dataset id, local folder in hub layout or file (custom: also builtin:general-mc); "
        "default: the benchmark's hub dataset",
    )
    subset: str | None = Field(None, description="hub configuration (default: the benchmark's, e.g. ARC-Challenge)")
    split: str | None = Field(None, description="split scored (default: the benchmark's lm-evaluation-harness split)")
    revision: str | None = Field(None, description="hub dataset revision to pin")
    limit: int = Field(500, gt=0, description="items scored: the first `limit` of the split, in its order")

    @model_validator(mode="after")
    def _custom_needs_source(self) -> McSpec:
        if self.benchmark == "custom" and not self.source:
            raise ValueError("a custom multiple-choice set needs a source")
        return self


class ForgettingSpec(_Section):
    """General ability, compared with the base model's cached scores: loss on held-out general text (the probe)
    and multiple-choice benchmark accuracy."""

    probe: str = Field(
        "builtin:general-probe",
        description="builtin:<name>, a hub dataset id, a local folder in hub layout, or a JSON/JSONL/Parquet/text file",
    )
    probe_field: str = Field("text", description="record field holding the text")
    probe_subset: str | None = Field(None, description="hub configuration of the probe (e.g. wikitext-2-raw-v1)")
    probe_split: str = Field("test", description="hub split the probe reads (streamed: only what is used is read)")
    probe_revision: str | None = Field(None, description="hub dataset revision of the probe, to pin")
    mc: list[McSpec] = Field(
        default_factory=list,
        description="multiple-choice benchmarks (names such as [hellaswag, arc_challenge, winogrande], mappings, or "
        "a custom source): forget/mc_<benchmark> each, forget/mc_accuracy their mean, forget/mc_delta its drop",
    )
    samples: int = Field(48, gt=0, description="probe sequences scored per eval round")
    seq_len: int = Field(128, gt=8, description="tokens per probe sequence")
    measures: list[str] = Field(
        default_factory=list,
        description="further forgetting measures reported every round, by registered name (kl, judge); the probe "
        "always is, mc whenever `mc` lists benchmarks",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each measure's options, checked by the measure (e.g. judge: {url, model})",
    )
    primary: str = Field(
        "probe",
        description="the measure (probe, mc, kl, judge) whose metric drives the budget, the penalty and the Pareto "
        "front: probe → forget/delta, mc → forget/mc_delta, kl → forget/kl_task, judge → forget/judge_delta",
    )
    budget: float | None = Field(
        None,
        ge=0,
        description="stop a trial whose primary forgetting metric stays above this for `patience` evaluations",
    )
    patience: int = Field(2, gt=0, description="consecutive over-budget evaluations before stopping")

    @field_validator("mc", mode="before")
    @classmethod
    def _mc_forms(cls, v: Any) -> Any:
        """``None``, one name or source, or a list of names, sources and mappings → a list of benchmark mappings."""
        if v is None:
            return []
        items = v if isinstance(v, list) else [v]
        out = []
        for item in items:
            if isinstance(item, str):
                named = item in MC_BENCHMARKS and item != "custom"
                out.append({"benchmark": item} if named else {"benchmark": "custom", "source": item})
            else:
                out.append(item)
        names = [m.get("benchmark", "custom") if isinstance(m, dict) else None for m in out]
        dup = sorted({n for n in names if n and n != "custom" and names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmark {dup[0]} is listed twice")
        if names.count("custom") > 1:
            raise ValueError("at most one custom multiple-choice set (its metrics are forget/mc_custom)")
        return out
