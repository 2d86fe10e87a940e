"""``KickWiring``: what the virtio-mmio transport gives a device at DRIVER_OK so that its
kicks are served in C (``stratovmm.virtio.kicks``) — an eventfd per queue watched by the
device's loop, an irqfd, InterruptStatus — for a device under test on bare
``SplitQueue``s, without KVM.  ``kick(index)`` is what KVM does on a QueueNotify store
with an ioeventfd bound; ``interrupts()`` reads what C and Python raised on the irqfd.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.kvm.registers import RegisterCells
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.kicks import KickTable, serve_kicks_in_c
from stratovmm.virtio.queue import SplitQueue


class EventfdIrq:
    """An interrupt line as the transport sees the machine's irqfd line (``trigger`` and
    ``fd``; C raises it by writing ``fd``): hand it to ``VirtioMmioTransport`` so that its
    device's kicks are served in C.  ``edges()`` reads what was raised."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def trigger(self) -> None:
        """One edge (Python's side: ``VirtioMmioTransport.signal_used``)."""
        os.eventfd_write(self.fd, 1)

    def edges(self) -> int:
        """Edges raised since the last call."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the eventfd."""
        os.close(self.fd)


class KickWiring:
    """Kicks by eventfd and interrupts by irqfd for ``device``'s ``queues`` on ``loop``;
    made before ``device.activate``, as the transport does."""

    def __init__(self, loop: EventLoop, device: VirtioDevice,
                 queues: list[SplitQueue | None]) -> None:
        self._loop = loop
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self.eventfds = {index: os.eventfd(0, flags)
                         for index, queue in enumerate(queues) if queue is not None}
        self.irq = EventfdIrq()
        self.registers = RegisterCells(0, 0, 0, 0)     # InterruptStatus, as a transport's
        for index, efd in self.eventfds.items():
            loop.register(efd, EPOLLIN, self._handler(device, index, efd))
        device.fast_queues = serve_kicks_in_c(
            loop, device, queues, list(self.eventfds.items()),
            self.registers.interrupt_status_address(), self.irq.fd)

    @staticmethod
    def _handler(device: VirtioDevice, index: int, efd: int) -> Callable[[int], None]:
        def handler(_events: int) -> None:        # the transport's kick handler
            try:
                os.eventfd_read(efd)
            except BlockingIOError:
                return
            device.process_queue(index)
        return handler

    def kick(self, index: int) -> None:
        """The driver notified queue ``index``."""
        os.eventfd_write(self.eventfds[index], 1)

    def served_in_c(self, index: int) -> bool:
        """True while the loop's wait serves queue ``index``'s kicks in C."""
        return KickTable.of(self._loop).serves(self.eventfds[index])

    def interrupts(self) -> int:
        """Edges raised on the irqfd since the last call."""
        return self.irq.edges()

    def close(self) -> None:
        """Stop watching and close the fds."""
        for efd in self.eventfds.values():
            self._loop.unregister(efd)
            os.close(efd)
        self.irq.close()
