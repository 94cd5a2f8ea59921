"""The project's modules import each other without a cycle, counting imports inside functions too
(so none can hide a cycle); only ``if TYPE_CHECKING:`` blocks, which never run, are left out.

An edge goes from a module to each project module it imports: ``import a.b`` and ``from a import b``
(``a.b`` when it is a module, else ``a``). A submodule is not counted as importing its package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from mcckd.paths import PROJECT_ROOT

PACKAGES = ("mcckd", "flows", "tasks", "data_schemas")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, modules: set[str], here: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = here.split(".") if is_package else here.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules}


def import_graph() -> nx.DiGraph:
    paths = [p for package in PACKAGES for p in sorted((PROJECT_ROOT / package).rglob("*.py"))]
    modules = {module_name(p) for p in paths}
    graph = nx.DiGraph()
    for path in paths:
        name = module_name(path)
        graph.add_node(name)
        tree = ast.parse(path.read_text())
        for target in imports(tree, modules, name, path.name == "__init__.py"):
            if target != name:
                graph.add_edge(name, target)
    return graph


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert graph.number_of_nodes() > 50 and graph.number_of_edges() > 100  # the walk found the project
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, cycles


def test_the_graph_sees_imports_inside_functions(tmp_path):
    tree = ast.parse("def f():\n    from flows.demo import demo\n")
    assert imports(tree, {"flows.demo"}, "flows.sweep", False) == {"flows.demo"}
