"""Guest RAM in a bytearray, with the same checked access as the real thing."""

from __future__ import annotations

import mmap
from collections.abc import Sequence

from stratovmm.memory import GuestMemory


class BytearrayGuestMemory(GuestMemory):
    """``size`` bytes of zeroed guest RAM at guest address 0, or laid out as ``regions``.

    The backing bytearray is ``self.buffer``; tests can inspect it or check that
    nothing outside it was touched.
    """

    def __init__(self, size: int = 1 << 20,
                 regions: Sequence[tuple[int, int]] | None = None) -> None:
        layout = list(regions) if regions is not None else [(0, size)]
        self.buffer = bytearray(sum(length for _gpa, length in layout))
        super().__init__(self.buffer, layout)


class MappedGuestMemory(GuestMemory):
    """``size`` bytes of zeroed guest RAM at guest address 0 in an anonymous mapping:
    page-aligned, as a VM's RAM is, where a test needs the host addresses a VM would give
    (O_DIRECT's alignment).  The mapping is ``self.buffer``."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.buffer = mmap.mmap(-1, size)
        super().__init__(self.buffer, [(0, size)])
