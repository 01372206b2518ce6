"""Every input a spec names — the model, task data, the probe, the multiple-choice benchmarks — and where it lives:
builtin, a local file or folder, or the hub. ``gridrun validate`` checks them, ``gridrun prepare`` fetches them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gridrun.builtin import builtin_name
from gridrun.errors import GridrunError
from gridrun.spec import ExperimentSpec

__all__ = [
    "Source",
    "absolute_sources",
    "check_hub_cache",
    "hub_offline",
    "input_sources",
    "is_hub_id",
    "is_local",
    "judge_questions",
    "resolve_hub_ids",
]


@dataclass(frozen=True)
class Source:
    """One input: the spec field naming it, model or dataset, and the hub coordinates it is read at."""

    field: str
    kind: Literal["model", "dataset"]
    source: str
    subset: str | None = None
    splits: tuple[str, ...] = ()
    revision: str | None = None
    limit: int | None = None  # rows read (probe and benchmarks stream only what they use)


def input_sources(spec: ExperimentSpec) -> list[Source]:
    """The spec's inputs, in the order a trial reads them (builtin ones included; callers filter)."""
    from forgetting.data import mc_source_of

    d, f = spec.data, spec.forgetting
    out = [Source("model.name", "model", spec.model.name, revision=spec.model.revision)]
    task_splits = (d.split,) if d.eval and d.eval != d.task else (d.split, d.eval_split) if d.eval else (d.split,)
    out.append(Source("data.task", "dataset", d.task, d.subset, task_splits, d.revision))
    if d.eval and d.eval != d.task:
        out.append(Source("data.eval", "dataset", d.eval, d.subset, (d.eval_split,), d.revision))
    # the probe streams about 400k characters; the documents it reads are bounded by what prepare fetches
    out.append(Source("forgetting.probe", "dataset", f.probe, f.probe_subset, (f.probe_split,), f.probe_revision))
    for i, mc in enumerate(f.mc):
        source, subset, split = mc_source_of(mc)
        out.append(Source(f"forgetting.mc[{i}]", "dataset", source, subset, (split,), mc.revision, mc.limit))
    return out


def is_hub_id(source: str) -> bool:
    """A name that is neither builtin nor a local path: read from the hub (``org/name`` or ``name``)."""
    if builtin_name(source) is not None or source.startswith((".", "/", "~")):
        return False
    return not Path(source).expanduser().exists()


def is_local(source: str | None) -> bool:
    """A local file or folder: neither empty, builtin nor a hub id."""
    return bool(source) and builtin_name(source) is None and not is_hub_id(source)  # type: ignore[arg-type]


def judge_questions(spec: ExperimentSpec) -> str | None:
    """``forgetting.options.judge.questions`` where it is given as a string (validate refuses anything else)."""
    judge = spec.forgetting.options.get("judge")
    questions = judge.get("questions") if isinstance(judge, dict) else None
    return questions if isinstance(questions, str) else None


def _absolute(source: str | None) -> str | None:
    """A local file or folder as an absolute path; a builtin name or a hub id as it is."""
    if source is None or not is_local(source):
        return source
    return os.path.abspath(os.path.expanduser(source))


def absolute_sources(spec: ExperimentSpec) -> ExperimentSpec:
    """``spec`` with every local input made absolute against this directory: the model folder, the task and eval
    data, the probe, the benchmarks' sources, the judge's questions. Ray runs each trial in its own trial folder
    (it changes the working directory there), where a relative path names nothing, and a resumed experiment
    reads its recorded spec from wherever the command runs."""
    d, f = spec.data, spec.forgetting
    options = dict(f.options)
    questions = judge_questions(spec)
    if questions is not None:
        options["judge"] = {**options["judge"], "questions": _absolute(questions)}
    forgetting = f.model_copy(
        update={
            "probe": _absolute(f.probe),
            "mc": [m.model_copy(update={"source": _absolute(m.source)}) for m in f.mc],
            "options": options,
        }
    )
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"name": _absolute(spec.model.name)}),
            "data": d.model_copy(update={"task": _absolute(d.task), "eval": _absolute(d.eval)}),
            "forgetting": forgetting,
        }
    )


def hub_offline() -> bool:
    """Whether the hub is switched off for this process (``HF_HUB_OFFLINE``), as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub_ids(spec: ExperimentSpec) -> dict[str, str]:
    """Ask the hub for every hub model and dataset at its revision; returns ``{source: commit sha}``.

    Raises:
        GridrunError: one line naming the field and id that does not exist, or that could not be checked.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    shas: dict[str, str] = {}
    for src in input_sources(spec):
        if not is_hub_id(src.source) or src.source in shas:
            continue
        where = f"{src.field}: {src.kind} {src.source!r}" + (f" at revision {src.revision!r}" if src.revision else "")
        if hub_offline():
            raise GridrunError(f"{where} cannot be checked: the hub is switched off here (HF_HUB_OFFLINE=1)")
        try:
            info = (api.model_info if src.kind == "model" else api.dataset_info)(src.source, revision=src.revision)
        except RevisionNotFoundError:
            raise GridrunError(f"{where}: no such revision on the hub") from None
        except RepositoryNotFoundError:
            raise GridrunError(
                f"{where}: no such {src.kind} on the hub (or it is private and no token is set)"
            ) from None
        except Exception as e:  # network down, proxy, rate limit: one line, not a traceback
            raise GridrunError(f"{where} cannot be checked: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        shas[src.source] = str(info.sha)
    return shas


def check_hub_cache(spec: ExperimentSpec) -> None:
    """With the hub switched off, a hub model must be in the local hub cache (its ``config.json`` at its
    revision): one line naming offline mode now, not a worker's traceback after Ray has started.

    Hub datasets are left to the loaders: ``datasets`` keeps them in more than one cache layout.
    """
    from huggingface_hub import try_to_load_from_cache

    src = spec.model.name
    if not is_hub_id(src):
        return
    found = try_to_load_from_cache(src, "config.json", revision=spec.model.revision)
    if not isinstance(found, str):  # None (never fetched) or a cached "does not exist" marker
        at = f" at revision {spec.model.revision!r}" if spec.model.revision else ""
        raise GridrunError(
            f"model.name: {src!r}{at} is not in the local hub cache and the hub is switched off here "
            "(HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE, or fill a folder with `gridrun prepare` where the hub is up"
        )
