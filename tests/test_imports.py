"""The package's import graph, read from the source with ``ast``: no cycles (a module imports its
parent packages' ``__init__`` too, so cycles through packages count), the MIGU core imports nothing
from the rest of migu, and the report reads results without the runner."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "migu").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the migu modules it imports (anywhere in it, function bodies included), and the
    packages above each of those (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                parts = target.split(".")
                deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules)
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
        graph[name] = deps - {name} - own_packages
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_sees_a_cycle_through_a_package():
    graph = {"migu.a": {"migu.b", "migu.b.x"}, "migu.b": {"migu.b.y"}, "migu.b.x": set(), "migu.b.y": {"migu.a"}}
    assert _cycle(graph) is not None
    assert _cycle({"migu.a": {"migu.b"}, "migu.b": set()}) is None


def test_no_import_cycles():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_packages_import_each_other_one_way():
    """Between the subpackages (core, formats, methods, train, bench, ...) the imports form no cycle."""
    packages: dict[str, set[str]] = {}
    for name, deps in _graph().items():
        top = ".".join(name.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(d.split(".")[:2]) for d in deps)
    packages = {k: v - {k} for k, v in packages.items()}
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


def test_the_core_imports_nothing_else_of_migu_and_the_report_not_the_runner():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("migu.core"):
            assert all(d.startswith("migu.core") for d in deps), (name, deps)
        if name.startswith("migu.report"):
            assert not any(d.startswith(("migu.bench", "migu.train")) for d in deps), (name, deps)


def test_the_report_imports_no_method_code():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("migu.report"):
            assert not any(d.startswith("migu.methods") for d in deps), (name, deps)
