"""virtio-mmio slots: the 16 windows at 0xD000_0000 + i·4 KiB with IRQ 5 + i.

``attach`` puts a device in the next free slot, claims its MMIO window and
announces it on the kernel command line (``virtio_mmio.device=4K@0xADDR:IRQ``,
SPEC §2), which the guest's virtio-mmio driver probes at boot.

Hot-replace (SPEC §3): virtio-mmio has no hotplug, so, as StratoVirt does, each
hotplug driver reserves slots at boot holding an empty placeholder device;
``plug`` gives one a backend and ``unplug`` takes it away, each announced to the
guest with a config-change interrupt.  Slots are reserved only when a QMP
socket exists (nothing else could fill them) and cost the guest a probe each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stratovmm.boot import layout
from stratovmm.errors import ConfigError, HotplugError
from stratovmm.eventloop import EventLoop
from stratovmm.registry import HotplugDriver
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
    hotplug_addr: int = 0
    plugged_id: str | None = None


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

    # -- hot-replace ---------------------------------------------------------------------------

    def reserve_hotplug_slots(self, drivers: Iterable[HotplugDriver]) -> None:
        """Fill ``driver.slots`` slots per driver with its placeholder device (as many as
        the 16 windows leave free after the cold-plugged devices)."""
        machine = self._machine
        for driver in drivers:
            for addr in range(driver.slots):
                if None not in self.slots:
                    log.warning("%s: only %d of %d hot-replace slots fit beside the cold-plugged"
                                " devices", driver.driver, addr, driver.slots)
                    break
                device = driver.placeholder(machine.api, addr)
                self.attach(device, machine.main_loop)
                slot = self._slot_of(device)
                slot.hotplug_driver, slot.hotplug_addr = driver.driver, addr

    def _slot_of(self, device: VirtioDevice) -> Slot:
        for slot in self.slots:
            if slot is not None and slot.transport.device is device:
                return slot
        raise KeyError(device.id)

    def hotplug_slots(self, driver: str) -> list[Slot]:
        """The slots reserved for ``driver``, by address."""
        return [s for s in self.slots if s is not None and s.hotplug_driver == driver]

    def plug(self, driver: HotplugDriver, addr: int, device_id: str,
             args: dict[str, Any]) -> VirtioDevice:
        """``device_add``: give the placeholder at ``addr`` a backend under ``device_id``."""
        slots = self.hotplug_slots(driver.driver)
        if not 0 <= addr < len(slots):
            raise HotplugError(f"{driver.driver}: addr {addr:#x} is not a reserved slot"
                               f" (0..{len(slots) - 1})")
        slot = slots[addr]
        if slot.plugged_id is not None:
            raise HotplugError(f"{driver.driver}: slot {addr:#x} is already used by"
                               f" {slot.plugged_id!r}")
        device = slot.transport.device
        driver.plug(self._machine.api, device, args)
        slot.plugged_id = device_id
        return device

    def unplug(self, device_id: str, drivers: dict[str, HotplugDriver]) -> VirtioDevice:
        """``device_del``: empty the slot holding ``device_id``."""
        for slot in self.slots:
            if slot is not None and slot.plugged_id == device_id and slot.hotplug_driver:
                device = slot.transport.device
                drivers[slot.hotplug_driver].unplug(self._machine.api, device)
                slot.plugged_id = None
                return device
        raise HotplugError(f"no hot-plugged device {device_id!r}", not_found=True)

    def transports(self) -> list[VirtioMmioTransport]:
        """Every transport in slot order."""
        return [s.transport for s in self.slots if s is not None]

    def close(self) -> None:
        """Release every transport's ioeventfds."""
        for transport in self.transports():
            transport.close()
