"""docs/plugins.md stays true: its generated reference matches the docstrings, and every hook
and every name it promises as API exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from stratovmm import hookspecs

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "plugins.md"


def generator() -> ModuleType:
    """tools/gen_plugin_docs.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("gen_plugin_docs",
                                                  REPO / "tools" / "gen_plugin_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_plugin_docs", module)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_is_up_to_date() -> None:
    """Regenerating the marked blocks from the docstrings changes nothing (else run
    ``python tools/gen_plugin_docs.py``)."""
    text = DOC.read_text()
    assert generator().regenerate(text) == text, (
        "docs/plugins.md is out of date: run python tools/gen_plugin_docs.py")


def test_a_changed_docstring_would_be_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a hook docstring edited in the code no longer matches the file."""
    monkeypatch.setattr(hookspecs.vmm_vm_paused, "__doc__", "Edited.\n\n:param vm: x\n\nCalled.")
    text = DOC.read_text()
    assert generator().regenerate(text) != text


def test_every_hook_has_a_section() -> None:
    """Each hookspec has its own heading in the hook reference."""
    text = DOC.read_text()
    for name in (n for n in vars(hookspecs) if n.startswith("vmm_")):
        assert f"#### `{name}(" in text, name


def resolve(dotted: str) -> object:
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def test_dotted_names_in_the_doc_exist() -> None:
    """Every `stratovmm.x.y` the doc names (modules, classes, functions, constants) exists,
    so a rename in the code cannot leave the doc pointing nowhere."""
    text = DOC.read_text()
    entry_point_groups = {"stratovmm.devices", "stratovmm.options"}
    names = set(re.findall(r"`(stratovmm(?:\.[A-Za-z_]+)+)", text)) - entry_point_groups
    assert len(names) > 10
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            raise AssertionError(f"docs/plugins.md names {name}, which does not exist") from exc
