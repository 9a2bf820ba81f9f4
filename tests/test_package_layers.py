"""The package's imports go one way: no cycles, no import from a lower layer into a higher
one, `bench` imported only by the command line; and `report` / `status` start without torch.
Imports inside functions count: a deferred import is still a dependency, and a cycle of them
is still a tangle."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pointpeft_ray"

# Lowest first; a layer may import its own modules and any lower layer's, never a higher
# one's nor a sibling's (layers sharing a rank). `pointpeft_ray/__init__` re-exports the model
# API, so it sits with models. A job ends by writing the adapter bank that `predict` serves
# (jobs.runner -> serving.adapter_bank), so serving sits below jobs.
BASE = {"pointpeft_ray", "errors", "configuration", "atomic", "progress", "arrow_io", "assets", "output", "logs",
        "file_names", "folder_lock"}
ORDER = [BASE, {"models"}, {"data"}, {"engine"}, {"pretrain", "search"}, {"results"}, {"distributed"},
         {"serving"}, {"jobs"}, {"bench"}, {"cli"}]
RANK = {layer: rank for rank, layers in enumerate(ORDER) for layer in layers}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "pointpeft_ray":
        return "models"
    return "base" if parts[1] in BASE else parts[1]


def layer_rank(name: str) -> int:
    return 0 if name == "base" else RANK[name]


def imports(module: str):
    """(imported module, line) for every import of the package's own modules in `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from pkg import name` the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]  # `import pointpeft_ray.x.y as z` style names
            if target in MODULES and target != module:
                yield target, node.lineno


GRAPH = {module: sorted(set(imports(module))) for module in MODULES}


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def find_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def test_the_graph_sees_the_package():
    def targets(module):
        return {target for target, _ in GRAPH[module]}

    assert len(MODULES) > 50 and "pointpeft_ray.errors" in targets("pointpeft_ray")
    assert "pointpeft_ray.jobs.runner" in targets("pointpeft_ray.cli")  # inside a function
    assert "pointpeft_ray.results.plots" in targets("pointpeft_ray.results.search_report")  # `from . import plots`
    assert "pointpeft_ray.jobs.spec" in targets("pointpeft_ray.jobs.job_report")  # under TYPE_CHECKING


def test_no_import_cycles():
    cycles = find_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_go_down_the_layers():
    wrong = [f"{where(module, line)}: {layer(module)} imports {target} ({layer(target)})"
             for module, targets in GRAPH.items() for target, line in targets
             if layer(module) != layer(target) and layer_rank(layer(module)) <= layer_rank(layer(target))]
    assert not wrong, "imports from a lower layer into a higher (or sibling) one:\n" + "\n".join(wrong)


def test_only_the_command_line_imports_bench():
    wrong = [f"{where(module, line)}: imports {target}" for module, targets in GRAPH.items()
             for target, line in targets if layer(target) == "bench" and layer(module) not in ("bench", "cli")]
    assert not wrong, "\n".join(wrong)


LIGHT_COMMAND = """
import runpy, sys
sys.argv = ["pointpeft-ray", *sys.argv[1:]]
try:
    runpy.run_module("pointpeft_ray.cli", run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", [["report", "{folder}", "--plots", "{folder}/plots"], ["status", "--help"],
                                     ["report", "--help"]])
def test_light_commands_do_not_import_torch(tmp_path, command):
    from pointpeft_ray.search import SearchSpace
    from tests.test_report import CPU_DEMO, write_experiment

    write_experiment(tmp_path, SearchSpace.from_yaml(CPU_DEMO), ["t0", "t1", "t2", "t4"])
    args = [arg.format(folder=tmp_path) for arg in command]
    result = subprocess.run([sys.executable, "-c", LIGHT_COMMAND, *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == "torch imported: False", f"`pointpeft-ray {' '.join(command)}` loads torch"
