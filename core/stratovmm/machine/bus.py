"""PIO and MMIO buses: which device answers a guest access to an address.

vCPU threads look addresses up on every exit, and hotplug changes the bus
while they run, so the range table is an immutable snapshot replaced whole
(a reader sees the old table or the new one, never half of each).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from stratovmm.records import record


class BusDevice(Protocol):
    """A device register window: ``offset`` is relative to the window's base."""

    def read(self, offset: int, size: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...


@record(frozen=True, slots=True)
class BusRange:
    """``length`` addresses from ``base`` belong to ``device``."""

    base: int
    length: int
    device: BusDevice
    name: str


class Bus:
    """An address space of non-overlapping device windows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._ranges: tuple[BusRange, ...] = ()
        self._bases: tuple[int, ...] = ()
        self._mirrors: list[Callable[[Sequence[tuple[int, int, BusDevice]]], None]] = []

    def insert(self, device: BusDevice, base: int, length: int, name: str) -> None:
        """Claim [base, base+length) for ``device``; overlapping an existing window is an error."""
        if length <= 0:
            raise ValueError(f"{self.name}: {name} has an empty window")
        with self._lock:
            for r in self._ranges:
                if base < r.base + r.length and r.base < base + length:
                    raise ValueError(
                        f"{self.name}: {name} at {base:#x}+{length:#x} overlaps {r.name} at"
                        f" {r.base:#x}+{r.length:#x}"
                    )
            ranges = sorted((*self._ranges, BusRange(base, length, device, name)),
                            key=lambda r: r.base)
            self._publish(ranges)

    def remove(self, base: int) -> BusDevice:
        """Release the window starting at ``base`` and return its device."""
        with self._lock:
            for r in self._ranges:
                if r.base == base:
                    self._publish([x for x in self._ranges if x is not r])
                    return r.device
        raise KeyError(f"{self.name}: nothing at {base:#x}")

    def mirror(self, publish: Callable[[Sequence[tuple[int, int, BusDevice]]], None]) -> None:
        """Tell ``publish`` the (base, length, device) of every window, sorted, now and after
        every change, before the change returns (the vCPUs' C exit path keeps such a copy)."""
        with self._lock:
            self._mirrors.append(publish)
            publish([(r.base, r.length, r.device) for r in self._ranges])

    def _publish(self, ranges: list[BusRange]) -> None:
        self._ranges = tuple(ranges)
        self._bases = tuple(r.base for r in ranges)
        windows = [(r.base, r.length, r.device) for r in ranges]
        for publish in self._mirrors:
            publish(windows)

    def find(self, addr: int) -> tuple[BusDevice, int] | None:
        """The device at ``addr`` and the offset into its window, or None."""
        ranges, bases = self._ranges, self._bases
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            r = ranges[i]
            if addr - r.base < r.length:
                return r.device, addr - r.base
        return None

    def read(self, addr: int, size: int) -> bytes | None:
        """Read ``size`` bytes at ``addr``; None when no device is there."""
        hit = self.find(addr)
        if hit is None:
            return None
        return hit[0].read(hit[1], size)

    def write(self, addr: int, data: bytes) -> bool:
        """Write ``data`` at ``addr``; False when no device is there."""
        hit = self.find(addr)
        if hit is None:
            return False
        hit[0].write(hit[1], data)
        return True

    def ranges(self) -> tuple[BusRange, ...]:
        """The current windows, sorted by base."""
        return self._ranges
