"""No import cycle between migaki's modules at module level.

A cycle fails only when the import happens to enter it at one particular module (e.g.
`migaki eval` importing `migaki.evaluate` first), and the test suite, which has imported
everything by then, never sees it. So the module graph is checked statically: modules, their
module-level `migaki` imports, and the parent packages each import runs first."""

import ast
from pathlib import Path

import migaki

SOURCE = Path(migaki.__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """migaki modules a module imports when it loads (not inside functions or classes)."""
    found, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        else:
            pending.extend(ast.iter_child_nodes(node))
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents |= {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
    return with_parents & modules


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SOURCE / "migaki").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imports = module_level_imports(ast.parse(path.read_text("utf-8")), set(paths))
        # a module's own packages are already loading when it loads: not an edge
        graph[name] = {m for m in imports if m != name and not name.startswith(m + ".")}
    return graph


def cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of modules, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_modules_and_a_cycle():
    graph = import_graph()
    assert {"migaki.cli", "migaki.train.tasks", "migaki.evaluate.generation"} <= set(graph)
    assert "migaki.config" in graph["migaki.train.tasks"]
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_level_import_cycle():
    cycle = cycle_from(import_graph())
    assert cycle is None, " -> ".join(cycle or [])
