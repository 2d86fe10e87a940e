"""virtio-mmio slots: the 16 windows at 0xD000_0000 + i·4 KiB with IRQ 5 + i.

``attach`` puts a device in a window and claims its MMIO range; once every
device is built, ``finish`` announces the windows on the kernel command line in
window order (``virtio_mmio.device=4K@0xADDR:IRQ``, the parameter of Linux's
virtio_mmio driver that ``VIRTIO_MMIO_CMDLINE_DEVICES`` enables).  Linux registers
those devices, and so probes them and names its disks ``vda``, ``vdb``, ..., in
command-line order.

Hot-replace, as StratoVirt v0.3 does it (``micro_vm/src/lib.rs``): virtio-mmio
has no hotplug, so each hotplug driver owns numbered slots, windows whose device
``device_add`` gives a backend and ``device_del`` takes it away, each announced
to the guest with a config-change interrupt.  With a QMP socket the VM reserves
the drivers' slots first, in driver order (blk's 4, then net's 2: windows 0-3
and 4-5), and cold-plugged devices of a driver's kind (``takes_cold``) fill its
slots from address 0: with a root ``-drive`` in slot 0 (``vda``), ``device_add
... addr 0x1`` is ``vdb``, and a cold device can be ``device_del``-ed and its
slot reused.  Slots no cold device filled hold the driver's empty placeholder,
which the guest probes too, so slot N of blk is always ``vd`` + letter N.
Cold devices beyond a driver's slots get windows after the reserved ones and
become its slots N, N+1, ... (StratoVirt refuses a fifth drive; we keep it).
Without a QMP socket nothing is reserved (nothing could fill a slot); cold
devices take windows in the order they are built, which names disks the same.
When the 16 windows run out, the highest reserved window no cold device filled
gives way (with a warning), so a full configuration still starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from stratovmm.boot import layout
from stratovmm.errors import ConfigError, HotplugError
from stratovmm.host.eventloop import EventLoop
from stratovmm.records import record
from stratovmm.registry import HotplugDriver

if TYPE_CHECKING:
    from stratovmm.boot.cmdline import Cmdline
    from stratovmm.kvm.fds import VmFd
    from stratovmm.machine.bus import Bus
    from stratovmm.machine.irq import IrqLine
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.memory import GuestMemoryProtocol
    from stratovmm.virtio.device import VirtioDevice
    from stratovmm.virtio.mmio import VirtioMmioTransport

log = logging.getLogger(__name__)


@record
class Slot:
    """One window: its transport and, for a hot-replace slot, the driver and address it
    answers to and the id of the device ``device_add`` (or the command line) put there."""

    index: int
    base: int
    irq: int
    transport: VirtioMmioTransport
    hotplug_driver: str | None = None
    hotplug_addr: int = 0
    plugged_id: str | None = None


IrqFactory = Callable[[int], "IrqLine | Callable[[], None]"]


class VirtioSlots:
    """Allocation of virtio-mmio windows for one machine.

    What the windows need, passed in rather than read off the machine: the VM fd
    (``None`` without KVM) for each transport's ioeventfds, guest memory for its
    rings, the MMIO bus its window goes on, the kernel command line that announces
    it, the interrupt line of each window's IRQ (``irq_line(gsi)``) and the main
    loop, where placeholders serve their queues.  The hotplug drivers' callbacks
    take the ``VmApi``: ``finish``, ``plug`` and ``unplug`` are given it.
    """

    def __init__(self, vm: VmFd | None, memory: GuestMemoryProtocol, mmio: Bus,
                 cmdline: Cmdline, irq_line: IrqFactory, main_loop: EventLoop) -> None:
        self._vm = vm
        self._memory = memory
        self._mmio = mmio
        self._cmdline = cmdline
        self._irq_line = irq_line
        self._main_loop = main_loop
        self.slots: list[Slot | None] = [None] * layout.VIRTIO_MMIO_SLOTS
        self._drivers: list[HotplugDriver[Any]] = []
        self._held: dict[int, tuple[HotplugDriver[Any], int]] = {}   # window → (driver, addr)
        self._announced = False

    # -- building -------------------------------------------------------------------------------

    def use_drivers(self, drivers: Iterable[HotplugDriver[Any]], reserve: bool) -> None:
        """Before the cold devices: know the hotplug drivers (their cold devices become
        slots) and, with ``reserve`` (a QMP socket), hold their slots' windows first."""
        self._drivers = list(drivers)
        if not reserve:
            return
        for driver in self._drivers:
            for addr in range(driver.slots):
                index = self._free_index()
                if index is None:
                    log.warning("%s: only %d of %d hot-replace slots fit", driver.driver, addr,
                                driver.slots)
                    break
                self._held[index] = (driver, addr)

    def attach(self, device: VirtioDevice, loop: EventLoop) -> VirtioMmioTransport:
        """Give a cold-plugged ``device`` a window: the next slot of the driver that takes
        it, else the next free window."""
        if self._announced:
            raise ConfigError(f"device {device.id}: virtio-mmio windows are fixed once the VM"
                              " is built (hot-replace goes through the reserved slots)")
        driver = next((d for d in self._drivers
                       if d.takes_cold is not None and d.takes_cold(device)), None)
        if driver is None:
            return self._place(self._window(device.id), device, loop).transport
        index, addr = self._slot_for_cold(driver, device.id)
        slot = self._place(index, device, loop, driver.driver, addr)
        slot.plugged_id = device.id
        return slot.transport

    def finish(self, api: VmApi) -> None:
        """After the cold devices: placeholders into reserved windows no cold device took,
        then every window on the kernel command line, in window order."""
        for index in sorted(self._held):
            driver, addr = self._held.pop(index)
            device = driver.placeholder(api, addr)
            self._place(index, device, self._main_loop, driver.driver, addr)
        for slot in self.slots:
            if slot is not None:
                self._cmdline.append(f"virtio_mmio.device=4K@{slot.base:#x}:{slot.irq}")
        self._announced = True

    def _free_index(self) -> int | None:
        for index, slot in enumerate(self.slots):
            if slot is None and index not in self._held:
                return index
        return None

    def _window(self, what: str) -> int:
        """A free window; when none is left, the highest reserved one gives way."""
        index = self._free_index()
        if index is not None:
            return index
        if self._held:
            index = max(self._held)
            driver, addr = self._held.pop(index)
            log.warning("%s: hot-replace slot %d dropped to make room for %s (at most %d"
                        " virtio devices)", driver.driver, addr, what, layout.VIRTIO_MMIO_SLOTS)
            return index
        raise ConfigError(f"{what}: no free virtio-mmio slot (at most {layout.VIRTIO_MMIO_SLOTS}"
                          " virtio devices, hot-replace slots included)")

    def _slot_for_cold(self, driver: HotplugDriver[Any], what: str) -> tuple[int, int]:
        """The lowest reserved slot of ``driver``, else a new window as its next slot."""
        held = [(addr, index) for index, (d, addr) in self._held.items() if d is driver]
        if held:
            addr, index = min(held)
            del self._held[index]
            return index, addr
        taken = [s.hotplug_addr for s in self.hotplug_slots(driver.driver)]
        return self._window(what), max(taken, default=-1) + 1

    def _place(self, index: int, device: VirtioDevice, loop: EventLoop,
               hotplug_driver: str | None = None, addr: int = 0) -> Slot:
        from stratovmm.virtio.mmio import VirtioMmioTransport  # only once a VM has a virtio device

        base, irq = layout.virtio_mmio_window(index)
        transport = VirtioMmioTransport(device, self._vm, self._memory, base,
                                        self._irq_line(irq), loop)
        self._mmio.insert(transport, base, layout.VIRTIO_MMIO_SIZE, f"virtio-mmio {device.id}")
        slot = self.slots[index] = Slot(index, base, irq, transport, hotplug_driver, addr)
        where = f" ({hotplug_driver} slot {addr})" if hotplug_driver else ""
        log.info("virtio device %s (type %d) at %#x irq %d%s", device.id, device.DEVICE_TYPE,
                 base, irq, where)
        return slot

    # -- hot-replace ---------------------------------------------------------------------------

    def hotplug_slots(self, driver: str) -> list[Slot]:
        """The slots of ``driver``, by address."""
        slots = [s for s in self.slots if s is not None and s.hotplug_driver == driver]
        return sorted(slots, key=lambda s: s.hotplug_addr)

    def plug(self, api: VmApi, driver: HotplugDriver[Any], addr: int, device_id: str,
             args: dict[str, Any]) -> VirtioDevice:
        """``device_add``: give the empty slot ``addr`` of ``driver`` a backend as
        ``device_id``."""
        slots = self.hotplug_slots(driver.driver)
        slot = next((s for s in slots if s.hotplug_addr == addr), None)
        if slot is None:
            have = ", ".join(f"{s.hotplug_addr:#x}" for s in slots) or "none"
            raise HotplugError(f"{driver.driver}: addr {addr:#x} is not a slot of this VM"
                               f" (slots: {have})")
        if slot.plugged_id is not None:
            raise HotplugError(f"{driver.driver}: the slot {addr:#x} is occupied by"
                               f" {slot.plugged_id!r}")
        device = slot.transport.device
        driver.plug(api, device, args)
        slot.plugged_id = device_id
        return device

    def unplug(self, api: VmApi, device_id: str,
               drivers: dict[str, HotplugDriver[Any]]) -> VirtioDevice:
        """``device_del``: empty the slot holding ``device_id`` (hot- or cold-plugged)."""
        for slot in self.slots:
            if slot is not None and slot.plugged_id == device_id and slot.hotplug_driver:
                device = slot.transport.device
                drivers[slot.hotplug_driver].unplug(api, device)
                slot.plugged_id = None
                return device
        raise HotplugError(f"no hot-replaceable device {device_id!r}", not_found=True)

    def transports(self) -> list[VirtioMmioTransport]:
        """Every transport in slot order."""
        return [s.transport for s in self.slots if s is not None]

    def close(self) -> None:
        """Release every transport's ioeventfds."""
        for transport in self.transports():
            transport.close()
