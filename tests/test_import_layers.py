"""No import circles between lmforge's subpackages and top-level modules.

Every ``import`` counts, also those inside functions: a lazy import hides a circle from
Python's import machinery but not from a reader, who still has to hold both packages in mind.
The nodes are the first component under ``lmforge`` (``lmforge.train.step`` -> ``train``,
``lmforge.config`` -> ``config``); an edge is "a module of A imports something from B".
"""

from __future__ import annotations

import ast
from pathlib import Path

import lmforge

PACKAGE_ROOT = Path(lmforge.__file__).parent


def _node(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "lmforge" or len(parts) < 2:
        return None
    return parts[1]


def _is_part(root: Path, name: str) -> bool:
    """A subpackage or module of lmforge (not an attribute such as ``__version__``)."""
    return (root / name).is_dir() or (root / f"{name}.py").is_file()


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from lmforge import train` names a subpackage, not a module attribute
            if target == "lmforge":
                found.update(f"lmforge.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        source = _node(module)
        if source is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(source, set())
        for target in _imported_modules(tree, module, is_package):
            node = _node(target)
            if node is not None and node != source and _is_part(root, node):
                edges.add(node)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "lmforge"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from lmforge.b import thing\n")
    (pkg / "b" / "__init__.py").write_text("def f():\n    from ..a import other\n")
    graph = import_graph(pkg)
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert circles(graph) == [["a", "b"]]


def test_no_import_circles_between_subpackages():
    graph = import_graph()
    assert {"train", "eval", "runs", "model", "cli"} <= set(graph)
    assert circles(graph) == [], f"import circles between lmforge's parts: {circles(graph)}"
