"""Plugins reach the core through ``stratovmm.api`` only: every shipped plugin, the example,
the contract test's sample plugin, the test-only plugins and the plugin template import
nothing of ``stratovmm`` but ``stratovmm.api`` (their tests also ``stratovmm.testing``), and
``stratovmm.api`` exports exactly what it imports."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from stratovmm import api
from stratovmm.plugintemplate import TREE, Names

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "core" / "stratovmm" / "plugintemplate" / TREE
PLUGIN_ROOTS = [*sorted((REPO / "plugins").glob("*/")), *sorted((REPO / "examples").glob("*/")),
                REPO / "tests" / "contract" / "sample_plugin"]
TEST_PLUGINS = [REPO / "tests" / "kvm" / "lifecycle_plugin" / "stratovmm_test_lifecycle.py",
                REPO / "tests" / "kvm" / "forbidden_plugin" / "stratovmm_test_forbidden.py",
                REPO / "tests" / "unit" / "widget_plugin.py"]
PLUGIN_CODE = ("stratovmm.api",)
TEST_CODE = ("stratovmm.api", "stratovmm.testing")


def core_imports(source: str, where: str) -> set[str]:
    """The ``stratovmm`` modules ``source`` imports (``from stratovmm import x`` counts as
    ``stratovmm.x``); other packages, plugins' own included, are not listed."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "stratovmm":
            found.update(f"stratovmm.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {name for name in found if name == "stratovmm" or name.startswith("stratovmm.")}


def outside(names: set[str], allowed: tuple[str, ...]) -> list[str]:
    """The names that are none of ``allowed`` nor inside one of them."""
    return sorted(n for n in names if not any(n == a or n.startswith(a + ".") for a in allowed))


def files() -> list[tuple[str, str, tuple[str, ...]]]:
    """(where, source, allowed) of every plugin-side Python file, templates filled in."""
    out = []
    for root in PLUGIN_ROOTS:
        for path in sorted(root.rglob("*.py")):
            allowed = TEST_CODE if "tests" in path.relative_to(root).parts else PLUGIN_CODE
            out.append((str(path.relative_to(REPO)), path.read_text(), allowed))
    for path in TEST_PLUGINS:
        out.append((str(path.relative_to(REPO)), path.read_text(), PLUGIN_CODE))
    names = Names.of("some-dev")
    for path in sorted(TEMPLATE.rglob("*.py.tmpl")):
        allowed = TEST_CODE if "tests" in path.relative_to(TEMPLATE).parts else PLUGIN_CODE
        out.append((str(path.relative_to(REPO)), names.fill(path.read_text()), allowed))
    return out


FILES = files()


def test_the_scan_sees_every_kind_of_plugin_file() -> None:
    """Plugin packages, their tests, the example, the sample, the template's package and
    tests are all scanned (an empty scan would pass anything)."""
    scanned = [where for where, _source, _allowed in FILES]
    for needle in ("plugins/blk/stratovmm_blk/plugin.py", "plugins/net/tests/",
                   "examples/boot-timer/stratovmm_boot_timer/", "sample_plugin/stratovmm_sample/",
                   "plugin.py.tmpl", "tests/test_${json_key}_device.py.tmpl"):
        assert any(needle in where for where in scanned), needle
    assert len(scanned) > 60


@pytest.mark.parametrize(("where", "source", "allowed"), FILES, ids=[f[0] for f in FILES])
def test_plugin_code_imports_only_the_plugin_api(where: str, source: str,
                                                 allowed: tuple[str, ...]) -> None:
    """Nothing of the core but stratovmm.api (and stratovmm.testing in tests)."""
    assert outside(core_imports(source, where), allowed) == []


@pytest.mark.parametrize("line", [
    "from stratovmm.registry import DeviceType",
    "import stratovmm.machine.vmapi",
    "from stratovmm import cli",
    "from stratovmm.apix import thing",
])
def test_an_internal_import_would_be_caught(line: str) -> None:
    """The check can fail: each of these in a plugin module is reported."""
    assert outside(core_imports(line, "probe.py"), PLUGIN_CODE) != []
    assert outside(core_imports("from stratovmm.api import hookimpl\n"
                                "from stratovmm.testing import spec", "probe.py"),
                   TEST_CODE) == []


def test_api_exports_exactly_what_it_imports() -> None:
    """``__all__`` lists every public name of stratovmm.api and nothing it lacks: what a
    plugin can import from it is what the module says it supports.  The names are
    imported on first use, so three lists must agree: ``__all__``, the table the module
    imports them by, and the imports mypy reads (under ``TYPE_CHECKING``)."""
    source = Path(api.__file__).read_text()
    checked = {alias.asname or alias.name
               for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.startswith("stratovmm.")
               for alias in node.names}
    table = {name for names in api._SOURCES.values() for name in names}
    assert sorted(api.__all__) == sorted(table) == sorted(checked)
    assert len(api.__all__) == len(set(api.__all__))
    for module, names in api._SOURCES.items():
        for name in names:
            assert getattr(api, name) is getattr(importlib.import_module(module), name)
    # (names starting with "@" are pytest's: it rewrites the asserts of the whole distribution
    # that ships its stratovmm.testing fixtures)
    public = {name for name in vars(api) if name[0] not in "_@"} - {
        "annotations", "importlib", "TYPE_CHECKING", "Any"}
    assert sorted(public) == sorted(api.__all__)


def test_api_names_are_imported_on_first_use() -> None:
    """Importing stratovmm.api imports none of the modules it re-exports from (a VM
    without virtio devices never loads the virtio models); an unknown name is an
    AttributeError, as for any module."""
    code = ("import sys, stratovmm.api\n"
            "print(sorted(m for m in sys.modules if m.startswith('stratovmm.virtio')))\n"
            "from stratovmm.api import VirtioDevice\n"
            "print('stratovmm.virtio.device' in sys.modules)\n"
            "try:\n    stratovmm.api.NoSuchName\nexcept AttributeError:\n    print('no')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:3] == ["[]", "True", "no"]
