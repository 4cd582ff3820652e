"""The layering the README describes holds: no import cycle among the package's modules (their
module-level imports), and training does not pull in condensation."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "replay_lcmat"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules imported at module level (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import submodule`` imports the submodule; ``from module import
            # name`` the module
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _top_level_imports(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    assert "replay_lcmat.selection.engine" in graph
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_training_imports_no_condensation_module():
    graph = import_graph()
    assert not any(
        m.startswith("replay_lcmat.condensation") for m in graph["replay_lcmat.training"]
    )


def test_selection_trains_no_model():
    """Pretraining the selection model is training's job; selection takes a trained model."""
    graph = import_graph()
    selection = [m for m in graph if m.startswith("replay_lcmat.selection")]
    assert selection and not any("replay_lcmat.training" in graph[m] for m in selection)
    import replay_lcmat.selection as selection_package
    import replay_lcmat.training as training

    assert not hasattr(selection_package, "pretrain_selection_model")
    assert callable(training.pretrain_selection_model)


@pytest.mark.slow
def test_importing_training_loads_no_condensation_module():
    code = (
        "import sys, replay_lcmat.training\n"
        "bad = [m for m in sys.modules if m.startswith('replay_lcmat.condensation')]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def function_level_imports(path: Path) -> list[str]:
    """``"line: module"`` of every import of the project's own modules made inside a function
    or class body (not at module level) of the file at ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if id(node) in top or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [alias.name for alias in node.names]
        )
        found += [f"{node.lineno}: {n}" for n in names if n.startswith("replay_lcmat")]
    return found


def test_function_level_import_finder_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from replay_lcmat.memory import build_memory\n")
    assert function_level_imports(probe) == ["4: replay_lcmat.memory"]


@pytest.mark.parametrize(
    "module", ["memory/policies.py", "memory/exemplars.py", "continual.py", "cli/demo.py"]
)
def test_the_memory_path_imports_the_project_at_module_level(module):
    assert function_level_imports(PACKAGE / module) == []
