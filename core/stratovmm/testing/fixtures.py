"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point, so any
test run in an environment where StratoVMM is installed has them).

- ``stratovmm_guest_dir``: the Linux test guest directory, or skip
- ``stratovmm_tiny_guest``: assemble a tiny PVH guest from a few lines of assembly, or skip
- ``stratovmm_vm``: a ``VmLauncher`` that boots VMs (the real ``stratovmm`` command in a
  subprocess) with the plugin under test loaded; every VM is ended after the test

and ``build_pvh_guest_or_skip``, what ``stratovmm_tiny_guest`` builds with, for module-scoped
fixtures and helpers that assemble guests themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stratovmm.testing.guest import guest_dir
from stratovmm.testing.tinyguest import TinyGuestUnavailable, build_pvh_guest
from stratovmm.testing.vm import VmLauncher


@pytest.fixture(scope="session")
def stratovmm_guest_dir() -> Path:
    """The Linux test guest from ``$STRATOVMM_GUEST_DIR``, or skip."""
    path = guest_dir()
    if path is None:
        pytest.skip("STRATOVMM_GUEST_DIR does not point at a guest")
    return path


@pytest.fixture
def stratovmm_tiny_guest(tmp_path_factory: pytest.TempPathFactory
                         ) -> Callable[[str], Path]:
    """``build(body, name="guest")``: a tiny PVH guest ELF whose ``main`` is ``body``
    (see ``stratovmm.testing.tinyguest``); skips when gcc cannot build 32-bit code."""
    directory = tmp_path_factory.mktemp("tinyguest")

    def build(body: str, name: str = "guest") -> Path:
        return build_pvh_guest_or_skip(directory, name, body)

    return build


def build_pvh_guest_or_skip(directory: Path, name: str, body: str) -> Path:
    """``build_pvh_guest``, skipping the calling test where this host cannot assemble
    32-bit code (a body that does not assemble still fails it)."""
    try:
        return build_pvh_guest(directory, name, body)
    except TinyGuestUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def stratovmm_vm(tmp_path: Path) -> Iterator[VmLauncher]:
    """A ``VmLauncher`` for this test: ``stratovmm_vm.start(*args, plugins=[PluginSource(...)])``
    boots a VM with the plugin loaded and returns a ``RunningVm`` (output, QMP, exit
    status).  Skips when ``/dev/kvm`` cannot be opened."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm not available")
    launcher = VmLauncher(tmp_path / "vms")
    try:
        yield launcher
    finally:
        launcher.close()
