"""Packaging: what imports under which name, what the install ships, what it declares.

Imports run in fresh interpreters (``sys.modules`` of the test process already holds Avalanche,
and a module imported once is not imported again), started in the repository root, where a
source checkout shadows the installed copy, and in a folder outside it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Subpackages of the core that must exist (and be importable without Avalanche); any other
# subpackage found under replay_lcmat/ is imported and checked too.
CORE = ("selection", "condensation", "data", "models", "curvature", "submodular", "cli")
CORE += ("diagnostics",)
MAPPED = {"replay_lcmat.strategies": "strategies", "replay_lcmat.benchmarks": "benchmarks"}


def _run(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter in ``cwd``; it prints one JSON object last."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CORE_IMPORTS = """
import importlib, json, pkgutil, sys
import replay_lcmat
names = sorted(
    m.name
    for m in pkgutil.walk_packages(replay_lcmat.__path__, "replay_lcmat.")
    if not m.name.endswith(".__main__")  # runs the command line when imported
    and not m.name.startswith(("replay_lcmat.strategies", "replay_lcmat.benchmarks"))
)
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "avalanche" or m.startswith("avalanche."))
print(json.dumps({"modules": names, "avalanche": loaded[:5], "file": replay_lcmat.__file__}))
"""


@pytest.fixture(params=["repository root", "elsewhere"])
def cwd(request, tmp_path) -> Path:
    return REPO if request.param == "repository root" else tmp_path


@pytest.mark.slow
def test_core_imports_without_avalanche(cwd):
    found = _run(CORE_IMPORTS, cwd)
    assert Path(found["file"]).resolve() == REPO / "replay_lcmat" / "__init__.py"
    modules = set(found["modules"])
    missing = [c for c in CORE if f"replay_lcmat.{c}" not in modules]
    assert not missing, f"core modules not found under replay_lcmat/: {missing}"
    assert len(modules) > 3 * len(CORE)  # the walk went into the subpackages
    if (REPO / "replay_lcmat" / "memory" / "__init__.py").is_file():
        assert "replay_lcmat.memory" in modules
    assert found["avalanche"] == [], (
        f"importing the core imported {found['avalanche']}: Avalanche belongs in "
        "replay_lcmat.strategies (or a function-level import)"
    )


NAMES = """
import importlib, json
out = {}
for name in ("replay_lcmat.replay_lcmat", "replay_lcmat.tests", "replay_lcmat.strategies",
             "replay_lcmat.benchmarks", "replay_lcmat.benchmarks.coreset"):
    try:
        out[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as err:
        out[name] = "missing: " + err.name
print(json.dumps(out))
"""


@pytest.mark.slow
def test_only_the_mapped_folders_import_under_the_package_name(cwd):
    found = _run(NAMES, cwd)
    # the checkout's own folders are not subpackages: no second copy of every module
    assert found["replay_lcmat.replay_lcmat"] == "missing: replay_lcmat.replay_lcmat"
    assert found["replay_lcmat.tests"] == "missing: replay_lcmat.tests"
    # strategies/ and benchmarks/ are, through the install's package-dir mapping
    for name, folder in MAPPED.items():
        assert Path(found[name]).resolve() == REPO / folder / "__init__.py", found[name]
    assert (
        Path(found["replay_lcmat.benchmarks.coreset"]).resolve()
        == REPO / "benchmarks" / "coreset.py"
    )


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _package_folders(top: Path, name: str) -> dict[str, Path]:
    """``{package name: folder}`` of ``top`` and every folder below it holding a ``.py`` file."""
    found = {}
    for folder in [top, *sorted(p for p in top.rglob("*") if p.is_dir())]:
        if "__pycache__" in folder.parts or not any(folder.glob("*.py")):
            continue
        found[".".join([name, *folder.relative_to(top).parts])] = folder
    return found


def test_every_package_folder_is_listed_for_the_install():
    """pyproject.toml lists the packages (``find`` cannot map strategies/ to another name):
    a new subpackage must be listed, or a wheel install silently lacks it."""
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"replay_lcmat": "replay_lcmat", **MAPPED}
    folders = _package_folders(REPO / "replay_lcmat", "replay_lcmat")
    for name, folder in MAPPED.items():
        folders |= _package_folders(REPO / folder, name)
    listed = set(setuptools["packages"])
    assert sorted(set(folders) - listed) == [], "add these to packages in pyproject.toml"
    assert sorted(listed - set(folders)) == [], "listed in pyproject.toml but not in the checkout"
    no_init = [name for name, folder in folders.items() if not (folder / "__init__.py").is_file()]
    assert no_init == [], f"package folders without __init__.py: {no_init}"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _optional_imports(tree: ast.AST) -> set[int]:
    """``id`` of the import statements inside ``try: ... except ImportError`` (optional ones)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return optional


def _third_party_imports(folder: Path) -> dict[str, str]:
    """``{top-level module: a file importing it}`` for every absolute import in ``folder``,
    module level or inside functions, outside the standard library and this project; imports
    guarded by ``except ImportError`` are optional and not counted."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "replay_lcmat":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize(
    ("folder", "extras"), [("replay_lcmat", ()), ("strategies", ()), ("benchmarks", ("bench",))]
)
@pytest.mark.slow
def test_every_imported_distribution_is_declared(folder, extras):
    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in extras:
        declared |= _requirement_names(project["optional-dependencies"][extra])
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in _third_party_imports(REPO / folder).items():
        providers = {_normalise(d) for d in distributions.get(module, [module])}
        if module not in distributions:  # an optional extra not installed here: match by name
            providers |= {d for d in declared if d.startswith(_normalise(module))}
        if not providers & declared:
            undeclared[module] = (sorted(providers), where)
    assert undeclared == {}, "imported but not declared in pyproject.toml: {module: (dist, file)}"


# -- the one archive setting and the benchmarks' shared plumbing --------------------------------


def test_the_archive_is_found_through_its_variable_only(monkeypatch, tmp_path):
    from replay_lcmat.benchmarks._common import ARCHIVE, cifar10_archive, resolve_data
    from replay_lcmat.data import shared_cifar10_archive
    from replay_lcmat.data.folder import CIFAR10_ARCHIVE_VARIABLE

    monkeypatch.delenv(CIFAR10_ARCHIVE_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory is searched either
    assert shared_cifar10_archive() is None
    with pytest.raises(FileNotFoundError, match=f"set \\${CIFAR10_ARCHIVE_VARIABLE}"):
        cifar10_archive("the test preset")
    with pytest.raises(FileNotFoundError, match="the test preset"):
        resolve_data(ARCHIVE, "the test preset")
    assert resolve_data("digits", "the test preset") == "digits"

    archive = tmp_path / "any-name.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv(CIFAR10_ARCHIVE_VARIABLE, str(archive))
    assert shared_cifar10_archive() == archive
    assert resolve_data(ARCHIVE, "the test preset") == str(archive)

    monkeypatch.setenv(CIFAR10_ARCHIVE_VARIABLE, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match=f"{CIFAR10_ARCHIVE_VARIABLE}.*not a file"):
        shared_cifar10_archive()


def test_the_command_written_into_results_is_the_given_argv_quoted(monkeypatch):
    import shlex

    from replay_lcmat.benchmarks._common import command_line

    argv = ["--preset", "cpu", "--methods", "lcmat-s[eps=0.05]", "--name", "a b"]
    command = command_line("coreset", argv)
    assert shlex.split(command) == ["python", "-m", "benchmarks.coreset", *argv]
    monkeypatch.setattr(sys, "argv", ["coreset.py", "--seeds", "1"])
    assert command_line("coreset") == "python -m benchmarks.coreset --seeds 1"
    assert command_line("coreset", []) == "python -m benchmarks.coreset"


def test_benchmarks_take_their_plumbing_from_common():
    """The device default, the command line, the archive and the writers have one copy
    (benchmarks/_common.py, on top of replay_lcmat.devices and replay_lcmat.reporting)."""
    copies = {
        "device default": "cuda.is_available",
        "command line": "sys.argv",
        "shell quoting": "shlex",
        "archive path": "shared/data",
        "results folder": '/ "results"',
        "csv writer": "DictWriter",
    }
    found = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        if path.name == "_common.py":
            continue
        text = path.read_text()
        found += [f"{path.name}: {what}" for what, needle in copies.items() if needle in text]
    assert found == [], "use benchmarks/_common.py instead"


def test_the_demo_records_a_command_that_parses_back_to_its_settings():
    import shlex

    from replay_lcmat.cli import build_parser
    from replay_lcmat.cli.demo import _settings_argv
    from replay_lcmat.reporting import command_line

    parser = build_parser()
    args = parser.parse_args(
        ["demo", "--data", "digits", "--seeds", "3", "4", "--out-dir", "a b/c"]
    )
    command = command_line("replay-lcmat demo", _settings_argv(args))
    assert command.startswith("replay-lcmat demo --data digits ") and "'a b/c'" in command
    assert vars(parser.parse_args(shlex.split(command)[1:])) == vars(args)
