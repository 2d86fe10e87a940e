"""``VirtioDevice``: what a virtio device plugin subclasses.

A subclass sets ``DEVICE_TYPE`` (§5 device id) and ``QUEUE_SIZES`` (the maximum
size of each queue), offers its feature bits in ``device_features()``, exposes
its configuration space in ``config_space()``, and handles a kicked queue in
``handle_queue(index)``.  Everything else — feature negotiation, queue setup,
ioeventfd/irqfd, reset — is the transport's job.

Threading: ``activate``, ``handle_queue`` and ``reset`` run on the device's own
loop (the main loop or its ``iothread``); ``read_config``/``write_config`` run on
vCPU threads, so mutable config state needs ``self.lock``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from stratovmm.devices.counters import DeviceCounters
from stratovmm.errors import GuestError
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1
from stratovmm.virtio.queue import QueueProtocolError, SplitQueue

log = logging.getLogger(__name__)

BASE_FEATURES = (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)


class Interrupt(Protocol):
    """How a device reaches its driver (implemented by the transport)."""

    def signal_used(self) -> None: ...
    def signal_config(self) -> None: ...
    def needs_reset(self) -> None: ...


class VirtioDevice(DeviceCounters):
    """Base class of every virtio device model."""

    DEVICE_TYPE = 0
    QUEUE_SIZES: tuple[int, ...] = ()

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.lock = threading.Lock()
        self.acked_features = 0
        self.memory: GuestMemoryProtocol | None = None
        self.queues: list[SplitQueue | None] = []
        self.interrupt: Interrupt | None = None
        self.active = False
        self.init_counters()

    # -- what subclasses describe ---------------------------------------------------

    def device_features(self) -> int:
        """Device-specific feature bits offered to the driver (beyond VERSION_1 etc.)."""
        return 0

    @property
    def avail_features(self) -> int:
        """Every feature bit offered."""
        return BASE_FEATURES | self.device_features()

    def has_feature(self, bit: int) -> bool:
        """True when the driver accepted feature ``bit``."""
        return bool(self.acked_features & (1 << bit))

    def config_space(self) -> bytes:
        """The device configuration space (§4.2.2 offset 0x100 onwards)."""
        return b""

    def read_config(self, offset: int, size: int) -> bytes:
        """A driver read of the config space; bytes past its end read as 0."""
        with self.lock:
            space = self.config_space()
        return space[offset : offset + size].ljust(size, b"\0")

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write of the config space: read-only unless a subclass says otherwise."""
        self.guest_fault("config-write", f"write of {len(data)} bytes at config offset {offset}")

    # -- lifecycle (device loop) --------------------------------------------------------

    def activate(self, memory: GuestMemoryProtocol, queues: list[SplitQueue | None],
                 interrupt: Interrupt) -> None:
        """The driver set DRIVER_OK: start serving ``queues`` (None = not set up)."""
        self.memory = memory
        self.queues = queues
        self.interrupt = interrupt
        self.active = True
        self.on_activate()
        for index, queue in enumerate(queues):
            if queue is not None:
                self.process_queue(index)

    def on_activate(self) -> None:
        """Hook for subclasses: register host fds, start timers."""

    def reset(self) -> None:
        """The driver reset the device: forget every queue."""
        self.active = False
        self.on_reset()
        self.queues = []
        self.acked_features = 0

    def on_reset(self) -> None:
        """Hook for subclasses: drop host-side state tied to the old queues."""

    def close(self) -> None:
        """The VM is ending: release host resources."""

    # -- queue processing (device loop) ---------------------------------------------------

    def process_queue(self, index: int) -> None:
        """A kick on queue ``index``: let the subclass handle it, keep the guest honest."""
        if not self.active or index >= len(self.queues) or self.queues[index] is None:
            return
        try:
            self.handle_queue(index)
        except QueueProtocolError as exc:
            self.guest_fault("ring", f"queue {index}: {exc}")
            self.active = False
            if self.interrupt is not None:
                self.interrupt.needs_reset()
        except GuestError as exc:
            self.guest_fault("request", f"queue {index}: {exc}")

    def handle_queue(self, index: int) -> None:
        """Serve queue ``index`` (subclasses)."""

    def drain(self, index: int, handler: Callable[[DescriptorChain], int]) -> int:
        """Pop every available chain of queue ``index``, complete each with ``handler(chain)``
        bytes written, then interrupt the driver if it asked; returns chains served.

        The queue's own bad-chain counter feeds ``guest_faults``.
        """
        queue = self.queues[index]
        assert queue is not None
        served = 0
        before = queue.bad_chains
        while True:
            chain = queue.pop()
            while chain is not None:
                queue.add_used(chain.head, handler(chain))
                served += 1
                chain = queue.pop()
            if not queue.set_notification(True):
                break
        bad = queue.bad_chains - before
        if bad:
            self.guest_fault("chain", f"queue {index}: {queue.errors[-1] if queue.errors else ''}",
                             count=bad)
        if (served or bad) and queue.needs_interrupt():
            self.signal_used()
        return served

    def signal_used(self) -> None:
        """Raise the used-buffer interrupt."""
        if self.interrupt is not None:
            self.interrupt.signal_used()

    # -- accounting ------------------------------------------------------------------------

