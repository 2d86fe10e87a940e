"""virtio-mmio slots: the 16 windows at 0xD000_0000 + i·4 KiB with IRQ 5 + i.

``attach`` puts a device in the next free slot, claims its MMIO window and
announces it on the kernel command line (``virtio_mmio.device=4K@0xADDR:IRQ``,
SPEC §2), which the guest's virtio-mmio driver probes at boot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stratovmm.boot import layout
from stratovmm.errors import ConfigError
from stratovmm.eventloop import EventLoop
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.mmio import VirtioMmioTransport

if TYPE_CHECKING:
    from stratovmm.machine import MicroVm

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One window: its transport, and the hotplug driver it is reserved for (if any)."""

    index: int
    base: int
    irq: int
    transport: VirtioMmioTransport
    hotplug_driver: str | None = None


class VirtioSlots:
    """Allocation of virtio-mmio windows for one machine."""

    def __init__(self, machine: MicroVm) -> None:
        self._machine = machine
        self.slots: list[Slot | None] = [None] * layout.VIRTIO_MMIO_SLOTS

    def _free_index(self, what: str) -> int:
        for index, slot in enumerate(self.slots):
            if slot is None:
                return index
        raise ConfigError(f"{what}: no free virtio-mmio slot (at most {layout.VIRTIO_MMIO_SLOTS}"
                          " virtio devices, hot-replace slots included)")

    def attach(self, device: VirtioDevice, loop: EventLoop,
               hotplug_driver: str | None = None) -> VirtioMmioTransport:
        """Place ``device`` in the next free slot and announce it to the guest."""
        machine = self._machine
        index = self._free_index(f"device {device.id}")
        base, irq = layout.virtio_mmio_window(index)
        transport = VirtioMmioTransport(device, machine.vm, machine.memory, base,
                                        machine.irq_line(irq), loop)
        machine.mmio.insert(transport, base, layout.VIRTIO_MMIO_SIZE, f"virtio-mmio {device.id}")
        machine.cmdline.append(f"virtio_mmio.device=4K@{base:#x}:{irq}")
        self.slots[index] = Slot(index, base, irq, transport, hotplug_driver)
        log.info("virtio device %s (type %d) at %#x irq %d", device.id, device.DEVICE_TYPE, base,
                 irq)
        return transport

    def transports(self) -> list[VirtioMmioTransport]:
        """Every transport in slot order."""
        return [s.transport for s in self.slots if s is not None]

    def close(self) -> None:
        """Release every transport's ioeventfds."""
        for transport in self.transports():
            transport.close()
