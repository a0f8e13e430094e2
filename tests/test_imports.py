"""The package's import graph, read from the source with `ast` (nothing is imported): no cycle between fbcompress
modules, counting the imports inside functions too (a lazy import still ties two modules together), and imports
pointing one way only, from the command line down to the core (LAYERS)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fbcompress"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the fbcompress modules it imports (module level and inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_even_through_lazy_imports():
    graph = import_graph()
    assert len(graph) > 50 and "fbcompress.pipeline.quickstart" in graph["fbcompress.commands.quickstart"]  # all
    assert _cycles(graph) == []


def test_the_cycle_check_sees_a_lazy_cycle():
    """The checker itself: a cycle made of one module-level and one in-function import is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


# The layers, lowest first: a module may import its own layer and the layers before it, never one after it. The
# package root (`__version__` and the lazy public API) and `__main__` stand outside: anyone may read the version.
LAYERS = [
    ("core", "recipes"),
    ("modeling",),
    ("data",),
    ("bundle",),
    ("runtime",),
    ("evaluation",),
    ("training",),
    ("export",),
    ("search",),
    ("quantize",),
    ("benchmark",),
    ("release",),
    ("serving",),
    ("pipeline",),
    ("commands",),
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
OUTSIDE = {"fbcompress", "fbcompress.__main__"}


def _layer(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a later layer (RANK) than the importer's own."""
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name not in OUTSIDE
        for target in targets
        if target not in OUTSIDE and RANK[_layer(target)] > RANK[_layer(name)]
    )


def test_every_module_lives_in_a_known_layer():
    """A new top-level module or folder must be given its place in LAYERS."""
    unknown = sorted(name for name in import_graph() if name not in OUTSIDE and _layer(name) not in RANK)
    assert unknown == []


def test_imports_point_down_the_layers_only():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_sees_an_upward_lazy_import():
    """The checker itself: a runtime module importing the export stage (even inside a function) is reported."""
    graph = {"fbcompress.runtime.scoring": {"fbcompress.export.pipeline", "fbcompress.core.errors"},
             "fbcompress.export.pipeline": {"fbcompress.runtime.scoring"}, "fbcompress.core.errors": set()}
    assert upward_imports(graph) == ["fbcompress.runtime.scoring -> fbcompress.export.pipeline"]


def test_every_layer_says_what_lives_there():
    for package in RANK:
        init = PACKAGE / package / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), package
