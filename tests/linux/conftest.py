"""Linux-tier helpers: serialise guest boots machine-wide when asked to.

Set STRATOVMM_BOOT_LOCK=1 on a shared development machine so that parallel
test runs boot one guest at a time (each boot is CPU-bound for ~25 s).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest

LOCK_PATH = "/tmp/stratovmm-boot.lock"


@pytest.fixture
def boot_lock() -> Iterator[None]:
    """Hold the machine-wide boot lock for the test when STRATOVMM_BOOT_LOCK is set."""
    if not os.environ.get("STRATOVMM_BOOT_LOCK"):
        yield
        return
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
