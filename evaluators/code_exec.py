"""``code_exec``: extract the function from the completion and run it against test cases in the sandbox.

Examples carry ``function`` (name), ``cases`` (``[[args, expected], ...]``), ``type`` and ``difficulty``.
Metrics: pass_rate (all cases pass), partial_credit (share of cases passed), timeouts, crashes, extracted,
and pass_rate_<type> / pass_rate_d<level> for every type and level present in the examples. A timeout or
crash is a failed problem, never a failed trial.

The code runs in ``evaluators.sandbox`` (bubblewrap, an unprivileged user, seccomp). ``isolation: strict`` (the
default) refuses, in one line, to run where this machine gives no such sandbox (bubblewrap, user namespaces or
the seccomp filter missing); ``isolation: best_effort`` runs the code there anyway, with resource limits and an
audit hook only.
"""

from __future__ import annotations

import ast
import logging
import re
from collections import defaultdict
from typing import Any, ClassVar

from evaluators._base import Evaluator, GenerationSettings, register_evaluator
from evaluators.sandbox import MAX_SOURCE_CHARS, Limits, isolation_problem, run_cases
from evaluators.sandbox import isolation as isolation_layers

#: What ``isolation: strict`` requires of the sandbox (layer names as ``evaluators.sandbox.isolation`` gives them).
REQUIRED_LAYERS = ("bwrap", "userns", "unprivileged", "seccomp")

__all__ = ["CodeExecEvaluator", "extract_function"]

log = logging.getLogger("gridrun")

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_function(text: str, name: str) -> str | None:
    """The longest prefix of the (fenced) code that parses and defines ``name``; None if there is none. Never
    raises: source too deep for the parser (``RecursionError``, ``MemoryError``) goes to the sandbox as it is,
    which calls it a crash, and text over the sandbox's ``MAX_SOURCE_CHARS`` is not parsed at all (None)."""
    if len(text) > MAX_SOURCE_CHARS:
        return None
    m = _FENCE.search(text)
    code = m.group(1) if m else text
    start = code.find(f"def {name}(")
    if start < 0:
        return None
    head = code[:start]
    # keep imports written before the function; drop any prose
    imports = "\n".join(line for line in head.splitlines() if line.startswith(("import ", "from ")))
    lines = code[start:].splitlines()
    offset = imports.count("\n") + 1 if imports else 0  # lines before the function's in a candidate
    end = len(lines)
    while end > 0:
        candidate = (imports + "\n" if imports else "") + "\n".join(lines[:end]) + "\n"
        try:
            tree = ast.parse(candidate)
        except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes (Python 3.11)
            # a prefix holding the line the parser stopped at whole fails alike: skip to it (linear, not quadratic)
            stop = getattr(e, "lineno", None)
            end = min(end - 1, stop - offset) if isinstance(stop, int) and stop - offset > 0 else end - 1
            continue
        except (RecursionError, MemoryError):
            return candidate
        if any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body):
            return candidate
        end -= 1
    return None


@register_evaluator("code_exec")
class CodeExecEvaluator(Evaluator):
    metrics: ClassVar[tuple[str, ...]] = ("pass_rate", "partial_credit", "timeouts", "crashes", "extracted")
    metric_patterns: ClassVar[tuple[str, ...]] = (r"pass_rate_.+",)

    def __init__(
        self,
        generation: GenerationSettings | None = None,
        wall_s: float = 5.0,
        cpu_s: int = 3,
        memory_mb: int = 512,
        isolation: str = "strict",
    ) -> None:
        super().__init__(generation)
        where = "evaluate.options.code_exec"
        if not isinstance(wall_s, int | float) or isinstance(wall_s, bool) or not 0 < wall_s <= 600:
            raise ValueError(f"{where}.wall_s: seconds in (0, 600], got {wall_s!r}")
        for name, value, low in (("cpu_s", cpu_s, 1), ("memory_mb", memory_mb, 64)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < low:
                raise ValueError(f"{where}.{name}: a whole number >= {low}, got {value!r}")
        if isolation not in ("strict", "best_effort"):
            raise ValueError(f"{where}.isolation: 'strict' or 'best_effort', got {isolation!r}")
        self.limits = Limits(wall_s=float(wall_s), cpu_s=int(cpu_s), memory_mb=int(memory_mb))
        layers = isolation_layers()
        missing = [x for x in REQUIRED_LAYERS if x not in layers]
        if missing and isolation == "strict":
            why = " ".join(isolation_problem().split())  # one line, whatever bubblewrap printed
            raise ValueError(
                f"{where}.isolation: this machine gives the code sandbox no {' and no '.join(missing)}"
                f"{f' ({why})' if why else ''} (has: {', '.join(layers) or 'none'}); generated code would run with "
                "resource limits and an audit hook only. Install bubblewrap and pyseccomp (make install), or set "
                "isolation: best_effort to run it so anyway"
            )
        if missing:
            log.warning("code_exec: sandbox without %s (isolation: best_effort)", " and ".join(missing))

    def score(self, completions: list[str], examples: list[dict[str, Any]]) -> dict[str, float]:
        c = dict.fromkeys(self.metrics, 0.0)
        groups: dict[str, list[float]] = defaultdict(list)
        for text, ex in zip(completions, examples, strict=True):
            code = extract_function(text, ex["function"])
            cases = [(a, e) for a, e in ex["cases"]]
            if len(text) > MAX_SOURCE_CHARS:
                passed, status = [False] * len(cases), "crash"
            elif code is None:
                passed, status = [False] * len(cases), "no_function"
            else:
                c["extracted"] += 1
                res = run_cases(code, ex["function"], cases, self.limits)
                passed, status = res.passed, res.status
            c["timeouts"] += status == "timeout"
            c["crashes"] += status == "crash"
            solved = float(bool(passed) and all(passed))
            c["pass_rate"] += solved
            c["partial_credit"] += sum(passed) / max(1, len(passed))
            groups[f"pass_rate_{ex.get('type', 'unknown')}"].append(solved)
            groups[f"pass_rate_d{ex.get('difficulty', 0)}"].append(solved)
        n = max(1, len(examples))
        out = {k: v / n for k, v in c.items()}
        out.update({k: sum(v) / len(v) for k, v in sorted(groups.items())})
        return out

    def evaluate(self, model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
        return self.score(self.complete(model, tokenizer, examples), examples)
