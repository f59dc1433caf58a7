"""The shape of the house, checked: the import graph has no cycle (lazy imports included), the library never imports
the command-line layer, and importing raypipe stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import raypipe

PACKAGE = Path(raypipe.__file__).parent
# The command-line layer: the typer app and the `python -m` entry points over it. Nothing else may import them.
COMMAND_LINE = {"raypipe.cli", "raypipe.build", "raypipe.train", "raypipe.cli_finetune"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> raypipe modules it imports anywhere in its body (top level or inside functions)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from raypipe.labels import catalog` imports the submodule raypipe.labels.catalog
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue
            imported |= {t for t in targets if t in modules and t != name}
        graph[name] = imported
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "raypipe.pipeline" in graph["raypipe.cli"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_library_never_imports_the_command_line():
    offenders = {module: sorted(imported & COMMAND_LINE) for module, imported in import_graph().items()
                 if module not in COMMAND_LINE and imported & COMMAND_LINE}
    assert offenders == {}


def test_import_raypipe_is_light():
    """Heavy libraries load lazily: importing the package and its CLI pulls in none of them."""
    code = ("import sys, raypipe, raypipe.cli, raypipe.config, raypipe.output, raypipe.resume, raypipe.data, "
            "raypipe.pipeline, raypipe.labels.catalog, raypipe.stages.base; "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers', 'ray', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
