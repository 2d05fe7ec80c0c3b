"""The package's shape: its imports form no cycle, and importing it is light and side-effect free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion_tutorial"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports, at any depth of the file (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            candidates = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
        found |= {c for c in candidates if c in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package ``__init__`` counts as its folder)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        deps = _imports(path, modules) - {name}
        # importing a.b.c runs a/__init__ and a/b/__init__ too, but those only matter when they
        # import something themselves; keep the edge to the module that was named.
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_imports_have_no_cycle():
    graph = import_graph()
    # The top-level __init__ re-exports from every layer; it is the root, not part of a layer.
    graph = {k: v - {"diffusion_tutorial"} for k, v in graph.items()}
    assert len(graph) > 20
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to layers: ``diffusion_tutorial.X`` (a subpackage or a module)."""

    def layer(name: str) -> str:
        return ".".join(name.split(".")[:2])

    layers: dict[str, set[str]] = {}
    for name, deps in graph.items():
        if name == "diffusion_tutorial":
            continue
        layers.setdefault(layer(name), set()).update(
            layer(d) for d in deps if d != "diffusion_tutorial" and layer(d) != layer(name)
        )
    return layers


def test_layer_graph_sees_a_cycle_between_subpackages():
    # evaluation.cli -> pretrained -> evaluation.classifier: no module cycle, but a layer cycle.
    modules = {
        "diffusion_tutorial.evaluation.cli": {"diffusion_tutorial.pretrained"},
        "diffusion_tutorial.pretrained": {"diffusion_tutorial.evaluation.classifier"},
        "diffusion_tutorial.evaluation.classifier": set(),
    }
    assert find_cycle(modules) is None
    assert find_cycle(layer_graph(modules)) is not None


def test_subpackages_import_each_other_without_a_cycle():
    """Imports point down between layers too: a subpackage never needs one that needs it back."""
    layers = layer_graph(import_graph())
    assert len(layers) > 8
    assert find_cycle(layers) is None, f"layer cycle: {' -> '.join(find_cycle(layers))}"


@pytest.mark.parametrize(
    "relpath", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
)
def test_modules_stay_small(relpath):
    """A module over ~300 lines is a smell (STYLE.md): split by concept."""
    n = len((PACKAGE / relpath).read_text().splitlines())
    assert n <= 320, f"{relpath} has {n} lines: split it by concept"


def test_import_is_light_and_leaves_matplotlib_alone():
    code = (
        "import sys, diffusion_tutorial as dt\n"
        "assert 'matplotlib' not in sys.modules, 'import loaded matplotlib'\n"
        "import matplotlib\n"
        "before = dict(matplotlib.rcParams)\n"
        "dt.plotting\n"
        "after = dict(matplotlib.rcParams)\n"
        "changed = {k for k in before if before[k] != after[k]}\n"
        "assert not changed, changed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
