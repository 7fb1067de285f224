"""The layout rules of docs/architecture.md, checked on the source: module size, which way
imports run (function-level imports included), no import circles, Optuna's private
attributes in one module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "merge", "evals", "sweep")
MAX_LINES = 450
# A package may import only the packages listed for it.
ALLOWED = {
    "core": set(),
    "merge": {"core"},
    "evals": {"core"},
    "sweep": {"core", "merge", "evals"},
}
# Inside sweep/, each package imports only the ones before it (docs/architecture.md).
SWEEP_LAYERS = [
    {"sweep", "sweep.errors", "sweep.plugins"},
    {"sweep.demo"},
    {"sweep.config"},
    {"sweep.study"},
    {"sweep.report"},
    {"sweep.run"},
    {"sweep.nightly"},
    {"sweep.commands"},
    {"sweep.cli", "sweep.__main__"},
]
OPTUNA_PRIVATE = re.compile(r"\._storage\b|\._study_id\b|\._trial_id\b|\._thread_local\b|\._cached_frozen_trial\b")
OPTUNA_MODULE = "sweep/study/optuna_compat.py"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "family" in rel.parts:  # the shipped demo family is data
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import module` depends on that module; `from pkg import name`, on pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_module_is_over_450_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_imports_run_one_way_between_packages():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert wrong == []


def _sweep_layer(module: str) -> int:
    parts = module.split(".")
    name = ".".join(parts[:2])
    return next(i for i, layer in enumerate(SWEEP_LAYERS) if name in layer)


def test_sweep_packages_import_only_the_layers_below():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.startswith("sweep")
        for target in targets
        if target.startswith("sweep") and _sweep_layer(target) > _sweep_layer(module)
    )
    assert wrong == []


def test_no_import_circles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_optuna_private_attributes_live_in_one_module():
    hits = sorted(
        f"{path.relative_to(ROOT)}:{i}"
        for path in _modules().values()
        if str(path.relative_to(ROOT)) != OPTUNA_MODULE
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if OPTUNA_PRIVATE.search(line)
    )
    assert hits == [], f"Optuna's private attributes outside {OPTUNA_MODULE}: {hits}"


def _top_level_names(path: Path) -> set[str] | None:
    """The names a module binds outside its functions and classes (under `if`/`try` at the
    top level too), or None when it has a module `__getattr__` or a star import, whose names
    cannot be read off the source."""
    names: set[str] = set()
    nodes: list[ast.AST] = list(ast.parse(path.read_text()).body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):  # not into their bodies
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
            nodes.extend(ast.iter_child_nodes(node))
    return names


def test_every_import_of_our_modules_names_something_that_exists():
    """A name moved out of a module breaks every function-level import of it, which only the
    code path that runs it finds (bench/probe_validity.py's `table` imported long_outcome from
    sweep.run.calibrate for a session after it had moved to sweep.run.longrun). Read every
    `from OURS import NAME` in the packages, bench/ and tests/ off the source, and every
    `script.NAME` of a bench script that imports another (`import probe_validity as pv`)."""
    modules = _modules()
    files = [*modules.values(), *sorted((ROOT / "bench").glob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    defined: dict[Path, set[str] | None] = {}

    def names_in(path: Path) -> set[str] | None:
        if path not in defined:
            defined[path] = _top_level_names(path)
        return defined[path]

    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in modules:
                continue
            names = names_in(modules[node.module])
            for alias in node.names:
                if names is not None and alias.name not in names and f"{node.module}.{alias.name}" not in modules:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {alias.name}")
    scripts = {path.stem: path for path in (ROOT / "bench").glob("*.py")}
    for path in scripts.values():
        tree = ast.parse(path.read_text())
        named = {
            a.asname or a.name: a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for a in node.names
            if a.name in scripts
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in named:
                names = names_in(scripts[named[node.value.id]])
                if names is not None and node.attr not in names:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert wrong == [], "imports of names that do not exist: " + "; ".join(wrong)
