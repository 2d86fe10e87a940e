"""The repository's shape: the core stands alone (nothing under ``core/stratovmm`` imports a
plugin package or the guest builder, ``stratovmm_*``: they depend on the core, never the other
way round), and every distribution it ships carries the licence."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "core" / "stratovmm"


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute imports; the core uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_no_plugin_and_not_the_guest_builder() -> None:
    """No core module imports ``stratovmm_<name>`` (a plugin, the example, stratovmm_guest)."""
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 50, "the scan must see the core's modules"
    offenders = {f"{path.relative_to(REPO)}: {name}" for path in modules
                 for name in imported_modules(path) if name.split(".")[0].startswith("stratovmm_")}
    assert not offenders, sorted(offenders)


DISTRIBUTIONS = [REPO, REPO / "guest", *sorted((REPO / "plugins").glob("*/")),
                 *sorted((REPO / "examples").glob("*/"))]


def test_license_file_is_apache_2() -> None:
    """The repository has the Apache License 2.0 text its metadata names."""
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("root", DISTRIBUTIONS, ids=lambda p: str(p.relative_to(REPO)) or ".")
def test_every_distribution_declares_the_license(root: Path) -> None:
    """Core, guest builder, each plugin and the example declare ``license = "Apache-2.0"``
    (an SPDX expression, so their build needs setuptools 77 or later)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
