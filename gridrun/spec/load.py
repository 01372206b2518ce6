"""Loading an experiment: YAML → deep-merged ``--set`` overrides → typed validation → search-space rules.

``load_spec`` is the single entry point, raising :class:`~gridrun.errors.SpecError` with one line naming the file
or field path and the bad value.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gridrun.errors import SpecError
from gridrun.spec.paths import set_path
from gridrun.spec.schema import ExperimentSpec, validate_dict
from gridrun.spec.space import FloatDist

__all__ = ["apply_overrides", "load_spec", "spec_from_dict"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 insists on ``1.0e-4``; people write ``1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read a YAML experiment, apply ``a.b=c`` overrides and validate it.

    Raises:
        SpecError: one line naming the file or field path and the bad value.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        raw = _yaml(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    return spec_from_dict(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Deep-merge ``a.b=c`` overrides (values parsed as YAML) into a copy of ``raw``.

    Only the named leaf changes; sibling keys stay. Keys of ``search.space`` contain dots themselves
    (``search.space.train.lr.high=0.01``): the longest known key, or spec path, is matched first.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"override {item!r}: expected dotted.key=value")
        try:
            value = _yaml(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        if parts[:2] == ["search", "space"] and len(parts) > 2:
            space = out.setdefault("search", {}).setdefault("space", {})
            if not isinstance(space, dict):
                raise SpecError("search.space: must be a mapping")
            rest = parts[2:]
            k = _space_key_length(rest, space)
            name = ".".join(rest[:k])
            if k == len(rest):
                space[name] = value
            else:
                node = space.setdefault(name, {})
                if not isinstance(node, dict):
                    node = space[name] = {}
                set_path(node, rest[k:], value)
            continue
        set_path(out, parts, value)
    return out


_DIST_KEYS = frozenset({"type", "low", "high", "log", "step", "choices"})


def _space_key_length(rest: list[str], space: dict[str, Any]) -> int:
    """How many leading parts of ``rest`` name the ``search.space`` key (the rest is inside its distribution).

    An entry the space already has wins (``train.lr`` + ``high``); otherwise the longest spec leaf or key under
    an option mapping (``data.options.questions_per_context``), a trailing distribution key left out.
    """
    for k in range(len(rest), 0, -1):
        if ".".join(rest[:k]) in space:
            return k
    n = len(rest) - 1 if len(rest) > 1 and rest[-1] in _DIST_KEYS else len(rest)
    mappings = _mapping_paths()
    for k in range(n, 0, -1):
        name = ".".join(rest[:k])
        if (_is_leaf_path(name) and name not in mappings) or any(name.startswith(m + ".") for m in mappings):
            return k
    return n


def spec_from_dict(raw: dict[str, Any], check_space: bool = True) -> ExperimentSpec:
    """Validate plain data into an :class:`ExperimentSpec` (unknown keys, types, and the search space)."""
    spec = validate_dict(raw)
    if check_space:
        _check_space(spec)
    return spec


@functools.cache  # the schema does not change: built once, read by every override and space check
def _leaf_fields(model: type[BaseModel] = ExperimentSpec, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaf_fields(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = f
    return out


def _is_leaf_path(path: str) -> bool:
    return path in _leaf_fields()


def _mapping_paths() -> list[str]:
    """Spec leaves that are free-form option mappings (their keys can be searched one by one)."""
    return [p for p, f in _leaf_fields().items() if f.annotation is not None and "dict" in str(f.annotation)]


#: Paths that make no sense to search (they change what the experiment *is*, not a trial's knob).
_UNSEARCHABLE = (
    "name",
    "description",
    "search.",
    "tracking.",
    "resources.",
    "checkpoint.",
    "scheduler.",
    "objective.",
    "model.",  # one base model per experiment: its forgetting baseline is computed once and shared
    "data.task",
    "data.eval",
    "forgetting.",
)


def _check_space(spec: ExperimentSpec) -> None:
    """Every searched path must be a real leaf, and every value the distribution can give must validate."""
    leaves = _leaf_fields()
    mappings = _mapping_paths()  # generator and evaluator knobs can be searched key by key
    for path, dist in spec.search.space.items():
        where = f"search.space.{path}"
        if path not in leaves and not any(path.startswith(m + ".") for m in mappings):
            close = [p for p in leaves if p.split(".")[-1] == path.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SpecError(f"{where}: '{path}' is not a spec field{hint}")
        if any(path == u.rstrip(".") or path.startswith(u) for u in _UNSEARCHABLE if u.endswith(".")) or (
            path in _UNSEARCHABLE
        ):
            raise SpecError(f"{where}: '{path}' cannot be searched (it defines the experiment, not a trial)")
        field = leaves.get(path)
        if isinstance(dist, FloatDist) and field is not None and field.annotation is int:
            raise SpecError(
                f"{where}: {path} is a whole number; a float distribution would give values like 3.7 "
                "(use type: int, or categorical)"
            )
        for label, value in dist.extremes():
            try:
                spec.with_params({path: value})
            except SpecError as e:
                detail = str(e).split(": ", 1)[-1]
                raise SpecError(f"{where}.{label}: {value!r} is not a valid {path}: {detail}") from None
