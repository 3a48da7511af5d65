"""The package's floors: what each part may import, and no import circle between any two files.

Every module is parsed with `ast`, so imports inside functions count, and so do the names of the
lazy ``_LAZY`` tables of package ``__init__`` files and ``importlib.import_module("m3ae...")``
calls. See docs/architecture.md for the floors.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "m3ae"

# The floors, lowest first (docs/architecture.md): a folder imports only from floors below it and
# from the base; no library floor imports the command line (m3ae.cli), which holds only argument
# tables and calls into the library.
FLOORS = ("models", "data", "weights", "tasks", "reports", "inference", "train", "experiments", "cli")
# models and data sit side by side: neither imports the other
SIDE_BY_SIDE = {"models": {"data"}, "data": {"models"}}
FORBIDDEN = {floor: set(FLOORS[i + 1:]) | SIDE_BY_SIDE.get(floor, set()) for i, floor in enumerate(FLOORS)}
# the lowest floor: single files at the root that import nothing of the package but each other
BASE = {"errors", "guards", "_lazy", "_version", "preprocessing", "hardware", "metrics", "distributed", "allocator",
        "compiling"}
MAX_ROOT_MODULES = 12
# ``m3ae.models.create_model``: a deprecated alias resolved on attribute access only (with a
# warning), kept so that old code does not break; the one allowed edge against a floor rule
DEPRECATED_ALIASES = {("m3ae.models", "m3ae.weights.factory")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _lazy_table(tree: ast.Module) -> dict[str, str]:
    """A package's ``_LAZY = {"name": "m3ae.module"}`` table, if it has one."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}
LAZY = {name: _lazy_table(tree) for name, tree in TREES.items()}


def _target(module: str, name: str | None) -> str | None:
    """The file that ``from module import name`` (or ``import module``) really reads."""
    if name is not None:
        if f"{module}.{name}" in MODULES:
            return f"{module}.{name}"  # a submodule
        if name in LAZY.get(module, {}):
            return LAZY[module][name]  # a lazily re-exported name: the module that defines it
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module if module in MODULES else None


def imports_of(name: str) -> set[str]:
    """Every package module `name` imports, at any depth of its code."""
    tree, is_pkg = TREES[name], MODULES[name].name == "__init__.py"
    out: set[str | None] = set(LAZY[name].values())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(_target(a.name, None) for a in node.names if a.name.startswith("m3ae"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("m3ae"):
                out.update(_target(module, a.name) for a in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).startswith("m3ae")):
            out.add(_target(node.args[0].value, None))
    return {m for m in out if m and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def floor(module: str) -> str:
    """"models" for m3ae.models.*, "cli" for m3ae.cli, ... ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_graph_sees_imports_inside_functions() -> None:
    # guards the parser itself: these edges exist only inside function bodies or lazy tables
    assert "m3ae.weights.upstream" in GRAPH["m3ae.weights.factory"]
    assert "m3ae.data.text" in GRAPH["m3ae.inference.pipeline"]  # `from m3ae.data import load_tokenizer`
    assert "m3ae.weights.factory" in GRAPH["m3ae"]  # the lazy table
    assert "m3ae.weights.factory" in GRAPH["m3ae.models"]  # the deprecated alias is seen, then exempted


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_floor_rules(lower: str) -> None:
    bad = [
        f"{src} -> {dst}"
        for src, deps in GRAPH.items() if floor(src) == lower
        for dst in deps if floor(dst) in FORBIDDEN[lower] and (src, dst) not in DEPRECATED_ALIASES
    ]
    assert not bad, f"m3ae.{lower} may not import {sorted(FORBIDDEN[lower])}: {bad}"


def test_every_folder_is_a_floor_and_the_root_stays_small() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(FLOORS), f"a new folder needs its place in FLOORS and docs/architecture.md: {folders}"
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert set(root) <= BASE, f"root modules outside the base floor: {set(root) - BASE}"
    assert len(root) + 1 <= MAX_ROOT_MODULES, f"{len(root) + 1} modules at the root (with __init__): {root}"


def test_no_module_over_600_lines() -> None:
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"split these modules (one job each): {long}"


def test_base_floor_imports_only_the_base() -> None:
    bad = [f"{src} -> {dst}" for src, deps in GRAPH.items() if floor(src) in BASE and src.count(".") == 1
           for dst in deps if floor(dst) not in BASE]
    assert not bad, bad


def test_no_import_circle_between_files() -> None:
    graph = {n: {d for d in deps if (n, d) not in DEPRECATED_ALIASES} for n, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_import_models_stays_light() -> None:
    code = ("import sys, m3ae.models, m3ae.models.io; "
            "bad = [m for m in sys.modules if m.startswith(('m3ae.train', 'm3ae.data', 'm3ae.weights')) "
            "or m == 'pyarrow']; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_deprecated_create_model_alias_still_works() -> None:
    import m3ae
    import m3ae.models

    with pytest.warns(DeprecationWarning, match="m3ae.create_model"):
        alias = m3ae.models.create_model
    assert alias is m3ae.create_model


def test_test_modules_do_not_import_each_other() -> None:
    """Shared test pieces live in conftest.py and tests/helpers/, so each test file runs on its own and
    no test module's import-time set-up leaks into another."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not found, found


MOVED_CHECK = """
import importlib, json, sys, warnings
import m3ae
bad = []
for old, new in m3ae._MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    warned = any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught)
    if not warned or module is not importlib.import_module(new) or module.__spec__.name != new:
        bad.append(old)
with warnings.catch_warnings():
    warnings.simplefilter("error")  # the documented paths that did not move import without a warning
    from m3ae import VQAPipeline, create_model, metrics
    from m3ae.inference import VQAPipeline as again, to_rgb_image
    from m3ae.cli import main
print(json.dumps(bad))
"""


def test_moved_module_paths_still_import_with_a_deprecation_warning() -> None:
    done = subprocess.run([sys.executable, "-c", MOVED_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_an_old_script_path_still_runs_its_command() -> None:
    done = subprocess.run([sys.executable, "-m", "m3ae.bench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: m3ae bench"), done.stderr[-2000:]


def test_no_library_module_imports_the_command_line() -> None:
    bad = [f"{src} -> {dst}" for src, deps in GRAPH.items() if floor(src) != "cli"
           for dst in deps if floor(dst) == "cli"]
    assert not bad, bad
