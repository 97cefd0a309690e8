"""The import graph of nlicot and data_gen, read from the code with ``ast``: no cycle, no arrow from nlicot up into
data_gen.

Every ``import`` counts, at module level and inside functions (a lazy import still ties the two modules: the
``hub`` ↔ ``tiny`` ↔ ``tiny_lm`` circle ran partly through function-level imports). ``importlib`` strings
(data_gen's command table) are not imports; they point from data_gen down into nlicot, which is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nlicot", "data_gen")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module that importing ``name`` runs: ``name`` itself, else its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports anywhere in its code (``from a import b``: ``a.b`` where that
    is a module, else ``a``)."""
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            graph[module] |= {t for t in (_target(n, modules) for n in names) if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_nlicot_and_data_gen_import_graph_has_no_cycle_and_no_arrow_from_nlicot_into_data_gen():
    graph = import_graph(REPO)
    assert "nlicot.offline.registry" in graph["nlicot.hub"]  # the graph is read (module-level import) ...
    assert "nlicot.schedule" in graph["nlicot.offline.tiny_nli"]  # ... including imports inside functions
    assert "nlicot.hub" in graph["data_gen.stages.build"]  # data_gen → nlicot: downhill, allowed
    assert cycles(graph) == []
    up = sorted((m, t) for m, targets in graph.items() if m.split(".")[0] == "nlicot"
                for t in targets if t.split(".")[0] == "data_gen")
    assert up == []


def test_the_reader_finds_a_cycle_through_a_function_level_and_a_relative_import(tmp_path):
    """The checks above can fail: a planted circle (one side lazy, one side relative) and an upward arrow."""
    (tmp_path / "nlicot").mkdir()
    (tmp_path / "data_gen").mkdir()
    (tmp_path / "nlicot" / "__init__.py").write_text("")
    (tmp_path / "data_gen" / "__init__.py").write_text("")
    (tmp_path / "nlicot" / "a.py").write_text("def f():\n    from nlicot import b\n")
    (tmp_path / "nlicot" / "b.py").write_text("from . import a\nimport data_gen.c\n")
    (tmp_path / "data_gen" / "c.py").write_text("from nlicot.a import f\n")
    graph = import_graph(tmp_path)
    assert graph["nlicot.a"] == {"nlicot.b"} and graph["nlicot.b"] == {"nlicot.a", "data_gen.c"}
    assert cycles(graph) == [["data_gen.c", "nlicot.a", "nlicot.b"]]
