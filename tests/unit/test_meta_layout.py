"""The core stands alone: nothing under ``core/stratovmm`` imports a plugin package or the
guest builder (``stratovmm_*``); they depend on the core, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

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
