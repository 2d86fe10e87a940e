"""Linux-tier fixtures: the machine-wide boot lock around each test that wants it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stratovmm.testing.guest import boot_lock as _boot_lock


@pytest.fixture
def boot_lock() -> Iterator[None]:
    """Hold the machine-wide boot lock for the test when STRATOVMM_BOOT_LOCK is set."""
    with _boot_lock():
        yield
