"""The one switch for StratoVMM's C fast paths: ``STRATOVMM_FASTPATH=0`` in the environment
turns them all off (the split ring's pop and used-ring writes, ``stratovmm.virtio.native``;
the vCPU's answers to exits no device claims, ``stratovmm.kvm.fds``), so every guest access
is handled by the Python code the fast paths are checked against.  Unset or any other value:
on (the default)."""

from __future__ import annotations

import os

FASTPATH_ENV = "STRATOVMM_FASTPATH"


def fastpath_enabled() -> bool:
    """The documented switch: the C paths unless ``STRATOVMM_FASTPATH=0``."""
    return os.environ.get(FASTPATH_ENV, "1") != "0"
