"""Layers that read bottom-up: no import cycle among the package's modules.

Every import counts, those inside functions too (a local import that only delays a cycle still
makes one); only imports under ``if TYPE_CHECKING:`` do not, since they never run. The graph is
read from the source with ``ast``, so nothing is imported and the test takes milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pipeline"


def module_name(path: Path) -> str:
    parts = ["pipeline", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, however nested, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _target(base: str) -> str | None:
    """The package module that ``base`` names (a module, or a package's __init__)."""
    while base and base not in MODULES:
        base = base.rpartition(".")[0]
    return base or None


def edges(name: str) -> set[str]:
    """The package modules that module ``name`` imports (function-level imports included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
        elif node.level:  # relative: from . import x, from ..store import y
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
            bases = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            base = node.module or ""
            bases = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        out |= {t for b in bases if b.startswith("pipeline") and (t := _target(b)) and t != name}
    return out


GRAPH = {name: edges(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_is_read():
    """The reader sees relative, absolute and function-level imports (a test that could not fail otherwise)."""
    assert "pipeline.analysis.summaries" in GRAPH["pipeline.analysis.fit"]
    assert "pipeline.verify" in GRAPH["pipeline.analysis.summaries"]  # from .. import plan, verify
    assert "pipeline.analysis.commands" in GRAPH["pipeline.cli"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_analysis_has_no_import_cycle():
    """No cycle passes through a module of pipeline.analysis (counting imports inside functions)."""
    found = [c for c in cycles(GRAPH) if any(m.startswith("pipeline.analysis") for m in c)]
    assert found == []


def test_analysis_reads_bottom_up():
    """plotting sits below the modules that draw; linear borrows nothing from report or figures."""
    assert GRAPH["pipeline.analysis.plotting"] <= {"pipeline.analysis.intervals"}
    assert not GRAPH["pipeline.analysis.linear"] & {"pipeline.analysis.report", "pipeline.analysis.figures",
                                                    "pipeline.analysis.given"}
    importers = {m for m in GRAPH if "pipeline.analysis.report" in GRAPH[m]}
    assert importers == {"pipeline.analysis.commands"}  # the report is the top of the analysis


def test_pipeline_has_no_import_cycle():
    assert cycles(GRAPH) == []
