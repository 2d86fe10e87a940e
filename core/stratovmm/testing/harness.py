"""``DeviceHarness``: drive a ``VirtioDevice`` through the real virtio-mmio transport
as a guest driver would, without KVM.

Guest RAM is a ``BytearrayGuestMemory``; the transport's interrupts are
counted; kicks go through the QueueNotify register and are served by running
the harness's own event loop once.  Plugin authors use it to unit-test device
models against the same register-level protocol Linux uses.
"""

from __future__ import annotations

import struct

from stratovmm.host.eventloop import EventLoop
from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.testing.virtqueue import MockSplitQueue
from stratovmm.virtio import constants as c
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.mmio import VirtioMmioTransport

MMIO_BASE = 0xD000_0000


class DeviceHarness:
    """One device, its transport, guest memory and a bump allocator for buffers."""

    def __init__(self, device: VirtioDevice, memory_size: int = 4 << 20,
                 queue_size: int = 16, loop: EventLoop | None = None) -> None:
        """``loop``: the loop the device serves its queues on (a device that arms
        timers or watches host fds on its own loop passes that loop here)."""
        self.device = device
        self.memory = BytearrayGuestMemory(memory_size)
        self.loop = loop if loop is not None else EventLoop("harness")
        self.interrupts = 0
        self.queue_size = queue_size
        self.transport = VirtioMmioTransport(device, None, self.memory, MMIO_BASE,
                                             self._irq, self.loop)
        self.queues: list[MockSplitQueue] = []
        self._next = 0x10000

    def _irq(self) -> None:
        self.interrupts += 1

    # -- memory ---------------------------------------------------------------------------------

    def alloc(self, length: int, align: int = 16) -> int:
        """A fresh guest buffer address (never reused)."""
        addr = (self._next + align - 1) & ~(align - 1)
        self._next = addr + max(length, 1)
        if self._next > self.memory.size:
            raise MemoryError("harness guest memory exhausted")
        return addr

    # -- registers --------------------------------------------------------------------------------

    def read_reg(self, offset: int) -> int:
        """32-bit register read."""
        return int(struct.unpack("<I", self.transport.read(offset, 4))[0])

    def write_reg(self, offset: int, value: int) -> None:
        """32-bit register write; any deferred work runs on the loop."""
        self.transport.write(offset, struct.pack("<I", value & 0xFFFFFFFF))
        self.run()

    def read_config(self, offset: int, size: int) -> bytes:
        """Device config space read."""
        return self.transport.read(c.CONFIG + offset, size)

    def run(self) -> None:
        """Run everything queued on the device loop."""
        self.loop.run_once(0)

    # -- driver initialisation (§3.1.1) ------------------------------------------------------

    def device_features(self) -> int:
        """The 64 feature bits the device offers."""
        self.write_reg(c.DEVICE_FEATURES_SEL, 0)
        low = self.read_reg(c.DEVICE_FEATURES)
        self.write_reg(c.DEVICE_FEATURES_SEL, 1)
        return low | (self.read_reg(c.DEVICE_FEATURES) << 32)

    def start(self, features: int | None = None, queues: int | None = None,
              event_idx: bool = False) -> int:
        """Reset, negotiate ``features`` (default: all offered, EVENT_IDX per ``event_idx``),
        set up ``queues`` queues and set DRIVER_OK; returns the final status.
        """
        self.write_reg(c.STATUS, 0)
        self.write_reg(c.STATUS, c.STATUS_ACKNOWLEDGE)
        self.write_reg(c.STATUS, c.STATUS_ACKNOWLEDGE | c.STATUS_DRIVER)
        offered = self.device_features()
        if features is None:
            features = offered if event_idx else offered & ~(1 << c.F_EVENT_IDX)
        for sel in (0, 1):
            self.write_reg(c.DRIVER_FEATURES_SEL, sel)
            self.write_reg(c.DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFFFFFF)
        status = c.STATUS_ACKNOWLEDGE | c.STATUS_DRIVER | c.STATUS_FEATURES_OK
        self.write_reg(c.STATUS, status)
        if not self.read_reg(c.STATUS) & c.STATUS_FEATURES_OK:
            return self.read_reg(c.STATUS)
        count = len(self.device.QUEUE_SIZES) if queues is None else queues
        self.queues = []
        for index in range(count):
            size = min(self.queue_size, self.device.QUEUE_SIZES[index])
            # descriptors, avail ring (6 + 2n), used ring (6 + 8n) and alignment (§2.7)
            rings = self.alloc(16 * size + 2 * size + 8 * size + 64, 4096)
            mock = MockSplitQueue(self.memory, rings, size, event_idx)
            self.write_reg(c.QUEUE_SEL, index)
            self.write_reg(c.QUEUE_NUM, size)
            for low, value in ((c.QUEUE_DESC_LOW, mock.desc_table),
                               (c.QUEUE_DRIVER_LOW, mock.avail_ring),
                               (c.QUEUE_DEVICE_LOW, mock.used_ring)):
                self.write_reg(low, value & 0xFFFFFFFF)
                self.write_reg(low + 4, value >> 32)
            self.write_reg(c.QUEUE_READY, 1)
            self.queues.append(mock)
        self.write_reg(c.STATUS, status | c.STATUS_DRIVER_OK)
        return self.read_reg(c.STATUS)

    def kick(self, index: int) -> None:
        """Notify queue ``index`` and let the device serve it."""
        self.write_reg(c.QUEUE_NOTIFY, index)


class CountingInterrupt:
    """What a device signals, counted: the ``interrupt`` to ``VirtioDevice.activate`` a
    device under test without a transport (a bare ``SplitQueue``)."""

    def __init__(self) -> None:
        self.used = self.config = self.resets = 0

    def signal_used(self) -> None:
        self.used += 1

    def signal_config(self) -> None:
        self.config += 1

    def needs_reset(self) -> None:
        self.resets += 1
