"""``MockSplitQueue``: the driver side of a split virtqueue over test memory.

It lays out a descriptor table, an available ring and a used ring in a
``GuestMemory`` (vm-virtio's model), lets a test post chains — well-formed or
deliberately broken — and read back what the device returned in the used
ring.  Hand ``config()`` to a transport or ``device_queue()`` to a device.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from stratovmm.memory import GuestMemory
from stratovmm.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from stratovmm.virtio.queue import QueueConfig, SplitQueue

_DESC = struct.Struct("<QIHH")


@dataclass(frozen=True)
class Buffer:
    """A buffer to post: ``length`` bytes at ``addr``, device-writable or not."""

    addr: int
    length: int
    writable: bool = False


class MockSplitQueue:
    """A driver-side split queue of ``size`` entries starting at guest address ``base``."""

    def __init__(self, memory: GuestMemory, base: int, size: int = 16,
                 event_idx: bool = False) -> None:
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.desc_table = base
        self.avail_ring = base + 16 * size
        used = self.avail_ring + 6 + 2 * size
        self.used_ring = (used + 3) & ~3
        self.end = self.used_ring + 6 + 8 * size
        self.avail_idx = 0
        self._next_free = 0
        self._used_seen = 0
        memory.write(base, bytes(self.end - base))

    # -- configuration handed to the device side --------------------------------------------

    def config(self) -> QueueConfig:
        """The Queue* register values a driver would write."""
        cfg = QueueConfig(self.size)
        cfg.desc_table, cfg.avail_ring, cfg.used_ring = (self.desc_table, self.avail_ring,
                                                          self.used_ring)
        cfg.ready = True
        return cfg

    def device_queue(self) -> SplitQueue:
        """The device-side queue over the same rings."""
        return SplitQueue.from_config(self.memory, self.config(), self.event_idx)

    # -- posting ------------------------------------------------------------------------------

    def write_descriptor(self, index: int, addr: int, length: int, flags: int,
                         next_index: int = 0, table: int | None = None) -> None:
        """Write raw descriptor ``index`` (anything, including nonsense)."""
        base = self.desc_table if table is None else table
        self.memory.write(base + 16 * index, _DESC.pack(addr, length, flags, next_index))

    def publish(self, head: int) -> None:
        """Put ``head`` in the available ring and advance ``avail->idx``."""
        slot = self.avail_ring + 4 + 2 * (self.avail_idx % self.size)
        self.memory.write_u16(slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def skip_descriptors(self, count: int) -> None:
        """Start the next chain ``count`` entries later: the test wrote those descriptors
        itself (``write_descriptor``)."""
        self._next_free = (self._next_free + count) % self.size

    def start_at(self, index: int) -> None:
        """Both rings at ``index``, as after ``index`` requests (tests of the 16-bit wrap);
        the device side's queue must be told the same (``last_avail``, ``next_used``)."""
        self.avail_idx = self._used_seen = index & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)
        self.memory.write_u16(self.used_ring + 2, self.avail_idx)

    def add_chain(self, buffers: Sequence[Buffer]) -> int:
        """Post a well-formed chain of ``buffers``; returns its head index."""
        indices = [(self._next_free + i) % self.size for i in range(len(buffers))]
        self._next_free = (self._next_free + len(buffers)) % self.size
        for n, (index, buf) in enumerate(zip(indices, buffers, strict=True)):
            last = n == len(buffers) - 1
            flags = (DESC_F_WRITE if buf.writable else 0) | (0 if last else DESC_F_NEXT)
            self.write_descriptor(index, buf.addr, buf.length, flags,
                                  0 if last else indices[n + 1])
        self.publish(indices[0])
        return indices[0]

    def add_indirect_chain(self, table_addr: int, buffers: Sequence[Buffer]) -> int:
        """Post one INDIRECT descriptor pointing at a table of ``buffers`` at ``table_addr``."""
        for n, buf in enumerate(buffers):
            last = n == len(buffers) - 1
            flags = (DESC_F_WRITE if buf.writable else 0) | (0 if last else DESC_F_NEXT)
            self.write_descriptor(n, buf.addr, buf.length, flags, 0 if last else n + 1,
                                  table=table_addr)
        head = self._next_free
        self._next_free = (self._next_free + 1) % self.size
        self.write_descriptor(head, table_addr, 16 * len(buffers), DESC_F_INDIRECT)
        self.publish(head)
        return head

    def set_used_event(self, value: int) -> None:
        """EVENT_IDX: interrupt me when the used index passes ``value``."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, value)

    def set_avail_flags(self, flags: int) -> None:
        """Write ``avail->flags`` (e.g. VIRTQ_AVAIL_F_NO_INTERRUPT)."""
        self.memory.write_u16(self.avail_ring, flags)

    # -- reading back -------------------------------------------------------------------------

    def used_idx(self) -> int:
        """``used->idx`` as the device left it."""
        return self.memory.read_u16(self.used_ring + 2)

    def used_elements(self) -> list[tuple[int, int]]:
        """New (head, length) pairs the device returned since the last call."""
        out = []
        while self._used_seen != self.used_idx():
            slot = self.used_ring + 4 + 8 * (self._used_seen % self.size)
            head, length = struct.unpack("<II", self.memory.read(slot, 8))
            out.append((head, length))
            self._used_seen = (self._used_seen + 1) & 0xFFFF
        return out

    def avail_event(self) -> int:
        """EVENT_IDX: the ``avail_event`` the device wrote."""
        return self.memory.read_u16(self.used_ring + 4 + 8 * self.size)

    def used_flags(self) -> int:
        """``used->flags`` (VIRTQ_USED_F_NO_NOTIFY)."""
        return self.memory.read_u16(self.used_ring)
