"""The core's parts import one way: ``tools/importgraph.py`` finds no cycle between parts, no
runtime import of a higher layer, no core import of the plugin facade (``stratovmm.api``) and
no part importing another's private (native) module — and it does find each of those in a
package built to break them, so the check can fail."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def importgraph() -> ModuleType:
    """tools/importgraph.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("importgraph",
                                                  REPO / "tools" / "importgraph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("importgraph", module)
    spec.loader.exec_module(module)
    return module


def test_the_core_layers_point_one_way() -> None:
    """No rule of tools/importgraph.py is broken by the core (run it to see the graph)."""
    tool = importgraph()
    graph = tool.build()
    assert {"machine", "virtio", "qmp", "kvm", "host", "config"} <= graph.parts
    assert tool.violations(graph) == []


def test_the_command_prints_the_graph_and_checks_it() -> None:
    """``python tools/importgraph.py --check`` prints every layer and exits 0 for the core."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "importgraph.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "layer 1: stratovmm, errors, registry" in proc.stdout
    assert "machine imports:" in proc.stdout
    assert "no cycles; every runtime edge points down" in proc.stdout


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_broken_layers_are_found(tmp_path: Path) -> None:
    """A package with a virtio <-> machine cycle, an upward import, a core import of the api
    facade, a cross-part private import and an unplaced part gets one problem for each."""
    root = tmp_path / "stratovmm"
    write(root, "__init__.py", "")
    write(root, "virtio/__init__.py", "")
    write(root, "virtio/mmio.py", "from stratovmm.machine.irq import IrqLine\n")
    write(root, "machine/__init__.py", "")
    write(root, "machine/irq.py", "def f() -> None:\n    import stratovmm.virtio.mmio\n")
    write(root, "qmp/__init__.py", "")
    write(root, "qmp/server.py", "from stratovmm import api\n")
    write(root, "api.py", "")
    write(root, "boot/__init__.py", "")
    write(root, "boot/params.py", "from stratovmm.kvm._kvm import lib\n")
    write(root, "kvm/__init__.py", "")
    write(root, "gadgets/__init__.py", "")
    tool = importgraph()
    problems = tool.violations(tool.build(root))
    assert "cycle: machine <-> virtio" in problems
    assert any(p.startswith("virtio -> machine points up") for p in problems)
    assert any(p.startswith("qmp -> api: api is a facade") for p in problems)
    assert "stratovmm.boot.params imports stratovmm.kvm._kvm, private to kvm" in problems
    assert "gadgets: not in LAYERS (place it in tools/importgraph.py)" in problems
    assert len(problems) == 5, problems


def test_typing_only_imports_are_shown_but_not_checked(tmp_path: Path) -> None:
    """An import under ``if TYPE_CHECKING:`` of a higher part is listed as typing only and
    breaks no rule (it never runs); the same import outside that block does."""
    root = tmp_path / "stratovmm"
    write(root, "__init__.py", "")
    write(root, "machine/__init__.py", "")
    write(root, "machine/vmapi.py", "from stratovmm.qmp import dispatch\n")
    write(root, "qmp/__init__.py", "")
    write(root, "qmp/dispatch.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from stratovmm.machine.vmapi import VmApi\n")
    tool = importgraph()
    graph = tool.build(root)
    assert set(graph.typing) == {("qmp", "machine")}
    assert tool.violations(graph) == []
    assert "qmp typing only: machine" in tool.render(graph)
    write(root, "qmp/dispatch.py", "from stratovmm.machine.vmapi import VmApi\n")
    assert "cycle: machine <-> qmp" in tool.violations(tool.build(root))
