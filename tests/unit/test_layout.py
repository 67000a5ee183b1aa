"""The shape of the package, held by tests: the import graph of src/tinylm (every import, those inside
functions too) has no cycle, and each module imports only from its own floor or the floors below it."""

from __future__ import annotations

import ast
import functools
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tinylm"

# Low to high. A module may import from its own floor and every floor below it, never from one above.
# An entry names a module, or a package with everything in it ("tinylm.rag.*").
FLOORS: list[tuple[str, list[str]]] = [
    ("ground", ["tinylm.errors", "tinylm.paths", "tinylm.files", "tinylm.sqlite"]),
    (
        "text and model",
        [
            "tinylm.model",
            "tinylm.cpu_kernels",
            "tinylm.hf_model",
            "tinylm.gguf_llama",
            "tinylm.tokenizers",
            "tinylm.templates",
            "tinylm.data",
            "tinylm.data.formats",
            "tinylm.compat",
            "tinylm.compat.seed",
            "tinylm.generate.options",  # the one list of generation options, which the config builds on
        ],
    ),
    (
        "storage",
        [
            "tinylm.config",
            "tinylm.checkpoint",
            "tinylm.convert",
            "tinylm.quantize",
            "tinylm.footprint",
            "tinylm.data.datasets",
        ],
    ),
    ("hub", ["tinylm.hub"]),
    ("generation", ["tinylm.generate", "tinylm.generate.*"]),
    ("api", ["tinylm.api"]),
    ("training and evaluation", ["tinylm.evaluate", "tinylm.harness", "tinylm.train", "tinylm.train.*"]),
    ("chat and rag", ["tinylm.rag", "tinylm.rag.*", "tinylm.chat", "tinylm.chat.*"]),
    ("serve", ["tinylm.serve", "tinylm.serve.*"]),
    ("workbench and the seed's API", ["tinylm.tools", "tinylm.tools.*", "tinylm.compat.sfa"]),
    ("entry points", ["tinylm.cli", "tinylm"]),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the tinylm modules it imports anywhere in its text (functions included), and those it
    names to `importlib.import_module`."""
    mods = modules()

    def owner(name: str) -> str | None:  # `tinylm.api.load` -> `tinylm.api`
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
                targets = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
            for target in targets:
                found = owner(target) if target.startswith("tinylm") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def floor_of(module: str) -> int:
    for i, (_, entries) in enumerate(FLOORS):
        for entry in entries:
            if module == entry or (entry.endswith(".*") and module.startswith(entry[:-1])):
                return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules()):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_through_importlib(tmp_path, monkeypatch):
    pkg = tmp_path / "tinylm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from tinylm.high import g\n")
    (pkg / "high.py").write_text("import importlib\nM = importlib.import_module('tinylm.sub.leaf')\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import low\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["tinylm.low"] == {"tinylm.high"}
    assert graph["tinylm.high"] == {"tinylm.sub.leaf"}
    assert graph["tinylm.sub.leaf"] == {"tinylm.low"}
    assert cycles(graph) == [["tinylm.high", "tinylm.low", "tinylm.sub.leaf"]]


@functools.cache
def package_graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_import_graph_has_no_cycle():
    assert cycles(package_graph()) == []


def test_every_module_is_on_a_floor():
    assert [m for m in sorted(modules()) if not _placed(m)] == []


def _placed(module: str) -> bool:
    try:
        floor_of(module)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("module", sorted(modules()))
def test_a_module_imports_nothing_from_a_floor_above_its_own(module):
    mine = floor_of(module)
    above = sorted(
        f"{target} ({FLOORS[floor_of(target)][0]})"
        for target in package_graph().get(module, ())
        if floor_of(target) > mine
    )
    assert above == [], f"{module} ({FLOORS[mine][0]}) imports from a floor above: {above}"


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines():
    """A long function is several steps: name them (STYLE.md, habit 9)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
