"""Test tiers by directory: unit/ (no KVM), kvm/ (tiny guests), linux/ (boots Linux),
contract/ (fresh venvs).  ``pytest -m "not linux"`` stays under a minute."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratovmm.testing.guest import guest_dir

TIERS = {"unit": "unit", "kvm": "kvm", "linux": "linux", "contract": "contract"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier from the directory it lives in."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for directory, marker in TIERS.items():
            if directory in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def kvm_available() -> None:
    """Skip unless /dev/kvm can be opened."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm not available")


@pytest.fixture(scope="session")
def guest(kvm_available: None) -> Path:
    """The Linux test guest directory (``$STRATOVMM_GUEST_DIR``)."""
    path = guest_dir()
    if path is None:
        pytest.skip("STRATOVMM_GUEST_DIR does not point at a guest (vmlinux, initramfs.cpio)")
    return path
