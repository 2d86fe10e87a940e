"""pytest fixtures for plugin authors (loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest

from stratovmm.testing.guest import guest_dir


@pytest.fixture(scope="session")
def stratovmm_guest_dir():  # type: ignore[no-untyped-def]
    """The Linux test guest from ``$STRATOVMM_GUEST_DIR``, or skip."""
    path = guest_dir()
    if path is None:
        pytest.skip("STRATOVMM_GUEST_DIR does not point at a guest")
    return path
