"""The virtio-mmio window layout and hot-replace slots, as StratoVirt v0.3 numbers them:
with QMP the blk slots (4) then the net slots (2) come first, cold drives and NICs fill
them from address 0, placeholders fill the rest, extra cold devices become further
slots, and the kernel command line lists the windows in window order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from stratovmm.boot import layout
from stratovmm.boot.cmdline import Cmdline
from stratovmm.errors import ConfigError, HotplugError
from stratovmm.host.eventloop import EventLoop
from stratovmm.machine.bus import Bus
from stratovmm.machine.slots import VirtioSlots
from stratovmm.registry import HotplugDriver
from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.virtio.device import VirtioDevice


class Disk(VirtioDevice):
    DEVICE_TYPE = 2
    QUEUE_SIZES = (16,)

    def __init__(self, device_id: str, image: str | None = None) -> None:
        super().__init__(device_id)
        self.image = image


class Nic(VirtioDevice):
    DEVICE_TYPE = 1
    QUEUE_SIZES = (16, 16)


class FastNic(Nic):
    """Like a vhost NIC: a NIC that does not go into a slot."""


class Rng(VirtioDevice):
    DEVICE_TYPE = 4
    QUEUE_SIZES = (16,)


LOOP = EventLoop("slots-test")       # never run: the transports only keep a reference
API: Any = None                      # what the drivers' callbacks get; these ignore it


@dataclass
class Host:
    """The machine's parts the slots use, with bytearray RAM and no KVM (no VM fd: the
    transports make no ioeventfds)."""

    memory: BytearrayGuestMemory = field(default_factory=BytearrayGuestMemory)
    mmio: Bus = field(default_factory=lambda: Bus("mmio"))
    cmdline: Cmdline = field(default_factory=Cmdline)
    main_loop: EventLoop = field(default_factory=lambda: LOOP)

    def irq_line(self, gsi: int) -> Callable[[], None]:
        return lambda: None

    def slots(self) -> VirtioSlots:
        """Slots over these parts, passed one by one as the machine passes its own."""
        return VirtioSlots(None, self.memory, self.mmio, self.cmdline, self.irq_line,
                           self.main_loop)

    def windows(self) -> list[str]:
        """The virtio_mmio.device= words, in command-line order."""
        return self.cmdline.render(4096).decode().rstrip("\0").split()


def plug_image(_vm: Any, device: Any, args: dict[str, Any]) -> None:
    device.image = args["file"]


def unplug_image(_vm: Any, device: Any) -> None:
    device.image = None


BLK = HotplugDriver("blk", 4, {"type": "object", "additionalProperties": False},
                    lambda _vm, addr: Disk(f"blk-slot{addr}"), plug_image, unplug_image,
                    lambda device: isinstance(device, Disk))
NET = HotplugDriver("net", 2, {"type": "object", "additionalProperties": False},
                    lambda _vm, addr: Nic(f"net-slot{addr}"), lambda *_: None, lambda *_: None,
                    lambda device: type(device) is Nic)


def build(cold: list[VirtioDevice], reserve: bool = True) -> tuple[VirtioSlots, Host]:
    host = Host()
    slots = host.slots()
    slots.use_drivers([BLK, NET], reserve)
    for device in cold:
        slots.attach(device, host.main_loop)
    slots.finish(API)
    return slots, host


def window(index: int) -> str:
    base, irq = layout.virtio_mmio_window(index)
    return f"virtio_mmio.device=4K@{base:#x}:{irq}"


def ids(slots: VirtioSlots) -> list[str]:
    return [s.transport.device.id for s in slots.slots if s is not None]


def test_with_qmp_blk_then_net_slots_come_first_and_cold_devices_fill_them() -> None:
    """Cold drives take blk slots 0, 1; the cold NIC net slot 0; the rng the next free
    window; placeholders hold the rest; the command line lists windows 0..7 in order, so
    slot N of blk is the guest's vd + letter N."""
    slots, host = build([Rng("rng"), Disk("root", "r.img"), Disk("data", "d.img"), Nic("eth")])
    assert ids(slots) == ["root", "data", "blk-slot2", "blk-slot3", "eth", "net-slot1", "rng"]
    assert host.windows() == [window(i) for i in range(7)]
    blk = slots.hotplug_slots("blk")
    assert [(s.hotplug_addr, s.plugged_id) for s in blk] == [
        (0, "root"), (1, "data"), (2, None), (3, None)]
    assert [(s.hotplug_addr, s.plugged_id) for s in slots.hotplug_slots("net")] == [
        (0, "eth"), (1, None)]


def test_slot_taken_by_a_cold_drive_is_occupied_until_device_del() -> None:
    """addr 0 holds the root drive: device_add there is refused; device_add at 1 fills the
    placeholder; device_del of the cold data drive frees its slot for a new image."""
    slots, _host = build([Disk("root", "r.img"), Disk("data", "d.img")])
    with pytest.raises(HotplugError, match="the slot 0x0 is occupied by 'root'"):
        slots.plug(API, BLK, 0, "hot", {"file": "h.img"})
    with pytest.raises(HotplugError, match="the slot 0x1 is occupied by 'data'"):
        slots.plug(API, BLK, 1, "hot", {"file": "h.img"})
    device = slots.plug(API, BLK, 2, "hot", {"file": "h.img"})
    assert device.id == "blk-slot2" and isinstance(device, Disk) and device.image == "h.img"
    removed = slots.unplug(API, "data", {"blk": BLK, "net": NET})
    assert isinstance(removed, Disk) and removed.id == "data" and removed.image is None
    assert slots.plug(API, BLK, 1, "again", {"file": "a.img"}) is removed
    assert removed.image == "a.img"
    with pytest.raises(HotplugError, match=r"addr 0x4 is not a slot of this VM \(slots: 0x0, "
                                           "0x1, 0x2, 0x3\\)"):
        slots.plug(API, BLK, 4, "x", {"file": "x.img"})
    with pytest.raises(HotplugError, match="no hot-replaceable device 'data'"):
        slots.unplug(API, "data", {"blk": BLK, "net": NET})


def test_cold_drives_beyond_the_slots_get_extra_windows_as_further_slots() -> None:
    """A fifth and sixth drive (v0.3 refuses them) come after the reserved windows and
    become blk slots 4 and 5; a vhost-like NIC that no driver takes gets a plain window."""
    drives = [Disk(f"d{i}", f"{i}.img") for i in range(6)]
    slots, host = build([*drives, FastNic("fast")])
    assert ids(slots) == ["d0", "d1", "d2", "d3", "net-slot0", "net-slot1", "d4", "d5", "fast"]
    assert [s.hotplug_addr for s in slots.hotplug_slots("blk")] == [0, 1, 2, 3, 4, 5]
    fast = next(s for s in slots.slots if s is not None and s.transport.device.id == "fast")
    assert fast.hotplug_driver is None and fast.plugged_id is None
    assert host.windows() == [window(i) for i in range(9)]


def test_without_qmp_nothing_is_reserved_and_cold_devices_keep_their_order() -> None:
    """No QMP socket: no placeholders; windows in build order (the first -drive is vda);
    cold drives are still numbered as blk slots."""
    slots, host = build([Rng("rng"), Disk("root", "r.img"), Nic("eth")], reserve=False)
    assert ids(slots) == ["rng", "root", "eth"]
    assert host.windows() == [window(i) for i in range(3)]
    assert [s.plugged_id for s in slots.hotplug_slots("blk")] == ["root"]


def test_when_windows_run_out_the_highest_reserved_slots_give_way() -> None:
    """Sixteen windows: 13 other devices and 1 drive leave 2 windows for the 5 free slots;
    net slot 1, net slot 0 then blk slot 3 give way, highest window first, and the
    devices still fit; with every slot gone, one device too many is an error naming it."""
    others = [Rng(f"r{i}") for i in range(13)]
    slots, _host = build([Disk("root", "r.img"), *others])
    assert [s.hotplug_addr for s in slots.hotplug_slots("blk")] == [0, 1, 2]
    assert slots.hotplug_slots("net") == []
    assert len([s for s in slots.slots if s is not None]) == layout.VIRTIO_MMIO_SLOTS
    with pytest.raises(ConfigError, match="r15: no free virtio-mmio slot"):
        build([Disk("root", "r.img"), *[Rng(f"r{i}") for i in range(16)]])


def test_windows_are_fixed_once_announced() -> None:
    """After finish() (the command line is written) no device can get a new window."""
    slots, host = build([])
    with pytest.raises(ConfigError, match="windows are fixed once the VM is built"):
        slots.attach(Rng("late"), host.main_loop)
