"""The code's shape, by AST over every import (module level, inside functions, under ``if TYPE_CHECKING`` left
out: those never run): no import cycle between modules, trial-side packages never import the driver side,
evaluators never import trainables, and a deliberate public list per package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gridrun", "trainables", "evaluators", "forgetting")

#: What runs in a trial (a Ray actor): it reports results and never drives the experiment.
TRIAL_SIDE = ("trainables", "evaluators", "forgetting")
#: The driver: Ray and Tune set-up, MLflow, the end of an experiment, reports, commands. Trials need none of it;
#: what both need (spec, errors, metrics, memory estimate, builtins, cache) lives below both.
DRIVER_SIDE = (
    "gridrun.cli",
    "gridrun.launch",
    "gridrun.finish",
    "gridrun.tracking",
    "gridrun.writer",
    "gridrun.run_writer",
    "gridrun.report",
    "gridrun.progress",
    "gridrun.checkpoints",
    "gridrun.stopping",
    "gridrun.packing",
    "gridrun.validate",
    "gridrun.prepare",
    "gridrun.compare",
    "gridrun.export",
    "gridrun.experiment",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere (functions and methods too), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found = set()
    for name in out:  # a dotted import also imports each parent package
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if m in modules} - {me}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is how re-exports work, not a cycle of ideas.
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert len(graph) > 30  # the walk saw the project, not an empty folder


def test_trial_side_never_imports_the_driver_side() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        if _under(m, TRIAL_SIDE)
        for d in sorted(deps)
        if _under(d, DRIVER_SIDE)
    ]
    assert not bad, bad


def test_evaluators_never_import_trainables() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        if _under(m, ("evaluators",))
        for d in deps
        if _under(d, ("trainables",))
    ]
    assert not bad, bad


def test_the_walk_sees_imports_inside_functions() -> None:
    """The floors above are only as good as the walk: a function-level import is seen."""
    graph = _graph()
    assert "trainables.qlora_sft" in graph["gridrun.launch"]  # imported inside _trainable and _baseline only


def test_every_package_declares_its_public_names() -> None:
    missing = []
    for init in (p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
        if "__all__" not in names:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, f"packages without __all__: {missing}"
