"""The supervisor's modules form a hierarchy: no module imports, even lazily, one that imports it.

A cycle (``_app`` -> ``_core`` -> ``_doctor`` -> ``_app`` was one) means two concerns live in
the wrong modules; a function-level import only hides it. Read from the source, so imports
inside functions and ``TYPE_CHECKING`` blocks count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = {"supervisor": "spec_kitty_supervisor", "client": "spec_kitty_supervisor_client"}
REPO = Path(__file__).resolve().parents[2]


def _module_name(folder: str, path: Path) -> list[str]:
    parts = [PACKAGES[folder], *path.relative_to(REPO / folder).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, module: list[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("spec_kitty_supervisor")}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for folder in PACKAGES:
        for path in sorted((REPO / folder).rglob("*.py")):
            module = _module_name(folder, path)
            graph[".".join(module)] = _imports(path, module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (depth-first, colouring nodes), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "spec_kitty_supervisor._core" in graph["spec_kitty_supervisor._app"]


def test_no_module_of_the_supervisor_or_the_client_is_part_of_an_import_cycle() -> None:
    assert find_cycle(import_graph()) is None
