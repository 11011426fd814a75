"""The package's shape, checked: layers import only downwards, no import cycles, no module over
400 lines, no private name used across packages, and the pytest plugin imported by nobody.

The layer contract lives in pyproject.toml ([tool.importlinter]) and is checked by import-linter.
"""
from __future__ import annotations

import ast
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "lab"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(LAB.rglob("*.py"))


def _package_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1]
    return ".".join(parts)


def test_layers_import_only_downwards():
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_no_import_cycles():
    graph = grimp.build_graph("lab", include_external_packages=False)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if graph.find_shortest_chain(importer=imported, imported=importer):
                cycles.append(f"{importer} <-> {imported}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_is_short(path):
    count = len(path.read_text().splitlines())
    assert count <= MAX_LINES, f"{path.relative_to(REPO)} has {count} lines; split it by job"


def test_no_private_names_across_packages():
    found = []
    for path in itertools.chain(_modules(), (REPO / "suites").rglob("*.py"), (REPO / "tests").rglob("*.py")):
        here = _package_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lab"):
                there = node.module if (REPO / node.module.replace(".", "/")).is_dir() else node.module.rpartition(".")[0]
                for alias in node.names:
                    if alias.name.startswith("_") and there != here:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{alias.name}")
    assert not found, "private names used across packages:\n" + "\n".join(found)


def test_nothing_imports_the_pytest_plugin():
    graph = grimp.build_graph("lab", include_external_packages=False)
    importers = {m for m in graph.find_downstream_modules("lab.pytest_plugin", as_package=True)
                 if not m.startswith("lab.pytest_plugin")}
    assert not importers, f"the pytest plugin is loaded by pytest only; imported by {sorted(importers)}"
    for path in itertools.chain((REPO / "suites").rglob("*.py"), (REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("lab.pytest_plugin") for n in names), f"{path}:{node.lineno} imports the plugin"


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    """The contract can fail: a copy of the package with lab.util importing lab.backends is refused."""
    shutil.copytree(LAB, tmp_path / "lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "lab" / "util" / "planted.py").write_text("import lab.backends.embedded.backend\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0 and "lab.util.planted" in proc.stdout, proc.stdout[-2000:]
