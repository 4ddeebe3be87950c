"""The import graph of migaki's modules: no cycle, no import from a lower layer to a higher
one, and function-level imports only where a comment says why (a handful).

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


# The layers from the bottom up (docs/architecture.md): a module imports only modules of its
# own layer or of layers below. The first prefix that matches a module names its layer.
LAYERS = [
    ["migaki.errors", "migaki.config"],
    ["migaki.precision", "migaki.integrity", "migaki.rundir", "migaki.models"],
    ["migaki.methods", "migaki.models.inference"],
    ["migaki.data"],
    ["migaki.objectives", "migaki.losses", "migaki.metrics"],
    ["migaki.tasks"],
    ["migaki.train", "migaki.evaluate"],
    [
        "migaki.estimate",
        "migaki.doctor",
        "migaki.quickstart",
        "migaki.testing",
        "migaki.export",
        "migaki.serve",
        "migaki.monitor",
        "migaki.sweep",
    ],
    ["migaki.ui"],
    ["migaki.commands", "migaki.cli", "migaki.__main__", "migaki"],
]
APART = ("migaki.train", "migaki.evaluate")  # one layer, and neither imports the other
# Function-level imports of migaki modules that stay, by module: each says why in a comment.
LATE_IMPORTS = {
    "migaki.cli": {"migaki"},  # `from migaki import commands`: --help without torch
    "migaki.cli_data": {"migaki"},  # `from migaki import models`: only to count tokens
    "migaki.tasks.distill": {"migaki.tasks"},  # the registry imports every task module
    "migaki.cli_monitor": {"migaki.monitor"},  # torch and the embedding model: only when run
    "migaki.cli_feedback": {"migaki.monitor"},  # the serve readers and sqlite3: only when run
    "migaki.cli_sweep": {"migaki.sweep"},  # Optuna, torch and the trainer: only when run
    "migaki.cli_ui": {"migaki.ui"},  # FastAPI, torch and the serve stack: only when run
}


def layer_of(module: str) -> int:
    best = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[1]):
                best = (number, len(prefix))
    assert best is not None, f"{module} belongs to no layer of LAYERS"
    return best[0]


def function_level_imports() -> dict[str, set[str]]:
    """migaki modules imported inside functions, by the module that imports them."""
    found: dict[str, set[str]] = {}
    for path in (SOURCE / "migaki").rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for name in names:
                    if name == "migaki" or name.startswith("migaki."):
                        found.setdefault(module_name(path), set()).add(name)
    return found


def test_the_graph_sees_the_modules_and_a_cycle():
    graph = import_graph()
    assert {"migaki.cli", "migaki.tasks.dpo", "migaki.evaluate.generation"} <= set(graph)
    assert "migaki.config" in graph["migaki.tasks.dpo"]
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_level_import_cycle():
    cycle = cycle_from(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_reaches_a_higher_layer():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, upward


def test_train_and_evaluate_do_not_import_each_other():
    crossing = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        for a, b in (APART, APART[::-1])
        if module.startswith(a) and (target == b or target.startswith(b + "."))
    ]
    assert not crossing, crossing


def test_function_level_imports_are_the_few_that_say_why():
    assert function_level_imports() == LATE_IMPORTS
