"""Guest RAM in a bytearray, with the same checked access as the real thing."""

from __future__ import annotations

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
