"""The kvm tier's tiny PVH guests: ``stratovmm.testing.tinyguest`` (the builder plugin
authors use; its docstring lists what a guest body can call), with the test skipped where
this host cannot assemble 32-bit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratovmm.testing.tinyguest import TinyGuestUnavailable, build_pvh_guest


def build_guest(directory: Path, name: str, body: str) -> Path:
    """``directory/NAME.elf`` from ``body`` (which defines ``main``); skips without gcc or
    32-bit support, fails when ``body`` does not assemble."""
    try:
        return build_pvh_guest(directory, name, body)
    except TinyGuestUnavailable as exc:
        pytest.skip(str(exc))
