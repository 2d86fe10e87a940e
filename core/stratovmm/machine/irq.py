"""Interrupt lines: an eventfd bound to a GSI with KVM_IRQFD.

Writing the eventfd makes KVM pulse the GSI on the in-kernel IOAPIC/PIC
without entering userspace or taking the GIL on the vCPU side, so any thread
(a device loop, an iothread) can raise an interrupt cheaply.
"""

from __future__ import annotations

import os

from stratovmm.kvm.fds import VmFd


class IrqLine:
    """GSI ``gsi`` of the in-kernel irqchip, raised through an irqfd."""

    def __init__(self, vm: VmFd, gsi: int) -> None:
        self.gsi = gsi
        self._vm = vm
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        vm.register_irqfd(self.fd, gsi)
        self.count = 0

    def trigger(self) -> None:
        """Inject one edge on the GSI."""
        self.count += 1
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        """Unbind the irqfd and close the eventfd."""
        try:
            self._vm.unregister_irqfd(self.fd, self.gsi)
        finally:
            os.close(self.fd)
