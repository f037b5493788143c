"""The benchmark scripts in bench/ still name what the package exports.

They import instructune lazily, inside main(), and run for many minutes before a bad import would
show; when a helper moves between modules (evaluate/run.py -> evaluate/score.py), only the next long
benchmark run would find out. This reads each script's `from instructune... import ...` lines and
checks every name exists, without running the script. Leaves out: the scripts' own behaviour.
"""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _instructune_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every `from instructune.x import name` in the file, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "instructune":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def _importable(module: str, name: str) -> bool:
    """`from module import name` would work: an attribute of the module, or a submodule of the package."""
    parent = importlib.import_module(module)
    if hasattr(parent, name):
        return True
    return hasattr(parent, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None


class TestBenchImports:
    def test_there_are_scripts_to_check(self):
        assert any(_instructune_imports(path) for path in SCRIPTS)

    @pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
    def test_every_imported_name_exists(self, path):
        missing = [f"{path.name}:{line}: {module}.{name}" for line, module, name in _instructune_imports(path)
                   if not _importable(module, name)]
        assert not missing, f"bench script imports names the package no longer has: {missing}"
