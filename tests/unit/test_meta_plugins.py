"""Every plugin looks the same and imports cleanly: the in-tree plugins (``plugins/*``) and the
example out-of-tree plugins (``examples/*``) have the standard file set and metadata, and
every module of theirs imports with warnings turned into errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_TREE = sorted(p for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists())
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if (p / "pyproject.toml").exists())
STANDARD_MODULES = ("__init__.py", "plugin.py", "schema.py", "device.py", "py.typed")


def package_of(root: Path) -> str:
    """``plugins/my-dev`` → ``stratovmm_my_dev``."""
    return "stratovmm_" + root.name.replace("-", "_")


def test_plugins_are_found() -> None:
    """The scan sees the plugins it must check (an empty list would pass everything)."""
    assert len(IN_TREE) >= 2 and EXAMPLES, (IN_TREE, EXAMPLES)


@pytest.mark.parametrize("root", IN_TREE + EXAMPLES, ids=lambda p: p.name)
def test_standard_file_set(root: Path) -> None:
    """pyproject.toml, stratovmm_NAME/{__init__,plugin,schema,device}.py + py.typed, and a
    tests/ directory holding at least one test module."""
    package = root / package_of(root)
    missing = [name for name in STANDARD_MODULES if not (package / name).is_file()]
    assert not missing, f"{root.name}: missing {missing}"
    assert list((root / "tests").glob("**/test_*.py")), f"{root.name}: no tests/test_*.py"


@pytest.mark.parametrize("root", IN_TREE + EXAMPLES, ids=lambda p: p.name)
def test_metadata_follows_the_convention(root: Path) -> None:
    """Distribution ``stratovmm-NAME``, entry point ``NAME = "stratovmm_NAME.plugin"`` in
    ``stratovmm.devices``, py.typed shipped, and the plugin module declares STRATOVMM_API."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    package = package_of(root)
    assert project["project"]["name"] == f"stratovmm-{root.name}"
    entry_points = project["project"]["entry-points"]["stratovmm.devices"]
    assert entry_points == {root.name: f"{package}.plugin"}
    assert "py.typed" in project["tool"]["setuptools"]["package-data"][package]
    assert "\nSTRATOVMM_API = " in (root / package / "plugin.py").read_text()


IMPORT_ALL = """
import importlib, importlib.util, pathlib, sys
root, package = pathlib.Path(sys.argv[1]), sys.argv[2]
# the installed copy also holds what its build compiled (a plugin's cffi module), which the
# tree does not: the tree's package looks there after itself
installed = importlib.util.find_spec(package)
sys.path.insert(0, str(root))
module = importlib.import_module(package)
assert pathlib.Path(module.__file__).parent == root / package, module.__file__
for place in (installed.submodule_search_locations or []) if installed else []:
    if place not in module.__path__:
        module.__path__.append(place)
for path in sorted((root / package).glob("*.py")):
    name = package if path.stem == "__init__" else f"{package}.{path.stem}"
    importlib.import_module(name)
"""


@pytest.mark.parametrize("root", IN_TREE + EXAMPLES, ids=lambda p: p.name)
def test_every_module_imports_with_warnings_as_errors(root: Path) -> None:
    """A fresh interpreter with -W error imports each module of the plugin from this tree
    (a DeprecationWarning at import time would break users running with -W error); a
    compiled module the tree lacks comes from the installed copy."""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", IMPORT_ALL, str(root),
                           package_of(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
