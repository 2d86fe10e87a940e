"""Test tiers by directory: unit/ (no KVM), kvm/ (tiny guests), linux/ (boots Linux),
contract/ (fresh venvs).  Tests run in that order, contract after kvm, so that the contract
venv (built in the background from the start of the session) is ready when they start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratovmm.testing.guest import guest_dir

TIERS = {"unit": "unit", "kvm": "kvm", "linux": "linux", "contract": "contract"}
ORDER = {"unit": 0, "kvm": 1, "contract": 2, "linux": 3}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier from the directory it lives in; run the tiers in order
    (plugin tests count as unit tests)."""
    rank: dict[int, int] = {}
    for item in items:
        parts = Path(str(item.fspath)).parts
        rank[id(item)] = 0
        for directory, marker in TIERS.items():
            if directory in parts:
                item.add_marker(getattr(pytest.mark, marker))
                rank[id(item)] = max(rank[id(item)], ORDER[marker])
    items.sort(key=lambda item: rank[id(item)])


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
