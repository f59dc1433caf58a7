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


def _imported(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The modules an import statement imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from raypipe.labels import catalog` imports the submodule raypipe.labels.catalog
        return [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names]
    return []


def import_graph() -> dict[str, set[str]]:
    """Module -> raypipe modules it imports anywhere in its body (top level or inside functions)."""
    modules = _modules()
    return {name: {t for node in ast.walk(ast.parse(path.read_text())) for t in _imported(node, modules)
                   if t in modules and t != name} for name, path in modules.items()}


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


HEAVY = {"torch", "vllm", "transformers", "ray", "datasets", "peft", "sklearn", "pandas", "matplotlib", "safetensors",
         "pyarrow", "wandb", "marimo"}


def _top_level_imports(path: Path) -> tuple[set[str], set[str]]:
    """(raypipe modules, other top-level packages) a module imports when it is imported (outside its functions)."""
    modules = _modules()
    own, other = set(), set()
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in (t for node in ast.walk(statement) for t in _imported(node, modules)):
            (own if name in modules else other).add(name if name in modules else name.split(".")[0])
    return own, other


def _loads_a_heavy_library(module: str, seen: set[str] | None = None) -> bool:
    """Whether importing the module (its parents' __init__ and what it imports at its top, recursively) loads torch,
    vLLM, Ray or another heavy library."""
    seen = set() if seen is None else seen
    modules = _modules()
    if module in seen:
        return False
    seen.add(module)
    parents = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
    own, other = _top_level_imports(modules[module])
    return bool(other & HEAVY) or any(_loads_a_heavy_library(m, seen) for m in (own | parents) & set(modules))


def imports_inside_functions() -> list[tuple[str, str]]:
    """(module, imported raypipe module) of every import of raypipe's own modules inside a function or method."""
    modules = _modules()
    return sorted({(name, target) for name, path in modules.items()
                   for function in ast.walk(ast.parse(path.read_text()))
                   if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(function) for target in _imported(node, modules)
                   if target.startswith("raypipe")})


def test_own_imports_sit_at_the_top_unless_the_module_loads_a_heavy_library():
    """raypipe's imports of its own modules are at the top of each file, where readers and tools see the structure;
    one sits inside a function only when the module it imports loads a heavy library (torch: the probe solvers) on
    import, so that the CLI and the driver stay light."""
    inside = imports_inside_functions()
    assert all(_loads_a_heavy_library(target) for _, target in inside), \
        [(module, target) for module, target in inside if not _loads_a_heavy_library(target)]
    assert len(inside) == 2, inside  # counted: the probes' solvers, imported where the fits run (sweep, evaluate)


def test_the_heavy_library_check_tells_light_modules_from_heavy_ones():
    assert not _loads_a_heavy_library("raypipe.fs") and not _loads_a_heavy_library("raypipe.cli")
    assert _loads_a_heavy_library("raypipe.probes.solvers")  # torch at its top
