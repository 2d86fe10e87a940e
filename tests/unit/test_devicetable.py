"""What a factory returns is attached, recorded and closed by the core, the same way for every
plugin: a virtio device gets a window on its loop, a register device its bus window; an id
in use, an overlapping window or a factory that fails or returns nothing is refused, naming
the plugin or the device, and the device built is closed; at exit every device is closed."""

from __future__ import annotations

from typing import Any

import pytest

from stratovmm.api import (
    ConfigError,
    DeviceType,
    EventLoop,
    MmioWindow,
    OptionSpec,
    PioWindow,
    PluginError,
    VirtioDevice,
    VirtioSlot,
)
from stratovmm.boot.cmdline import Cmdline
from stratovmm.machine.bus import Bus
from stratovmm.machine.devicetable import DeviceTable
from stratovmm.machine.slots import VirtioSlots
from stratovmm.testing import spec as c
from stratovmm.testing.memory import BytearrayGuestMemory

MAIN = EventLoop("main")
IO1 = EventLoop("io1")


class Rng(VirtioDevice):
    """A virtio device that remembers being closed."""

    DEVICE_TYPE = 4
    QUEUE_SIZES = (16,)
    closed = 0

    def close(self) -> None:
        self.closed += 1


class Port:
    """A register device that remembers being closed."""

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.closed = 0

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        """Ignored."""

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.closed += 1


class Parts:
    """A DeviceTable over real buses and slots, with bytearray RAM and no KVM."""

    def __init__(self) -> None:
        self.pio, self.mmio, self.cmdline = Bus("pio"), Bus("mmio"), Cmdline()
        self.slots = VirtioSlots(None, BytearrayGuestMemory(), self.mmio, self.cmdline,
                                 lambda gsi: lambda: None, MAIN)
        self.table = DeviceTable(self.slots, self.pio, self.mmio, self.loop_for)

    @staticmethod
    def loop_for(iothread: str | None) -> EventLoop:
        return {None: MAIN, "io1": IO1}[iothread]

    def create(self, factory: Any, item: dict[str, Any] | None = None) -> Any:
        kind = DeviceType("thing", OptionSpec("thing", "h", "thing"),
                          {"type": "object", "additionalProperties": False}, factory)
        return self.table.create(kind, "acme", item or {}, api=None)  # type: ignore[arg-type]


def driver_ok(parts: Parts, base: int) -> None:
    """Bring the virtio-mmio window at ``base`` to DRIVER_OK as a driver would (virtio 1.2
    §3.1.1: ACKNOWLEDGE, DRIVER, VERSION_1 accepted, FEATURES_OK, DRIVER_OK)."""
    def write(offset: int, value: int) -> None:
        parts.mmio.write(base + offset, value.to_bytes(4, "little"))

    write(c.STATUS, c.STATUS_ACKNOWLEDGE)
    write(c.STATUS, c.STATUS_ACKNOWLEDGE | c.STATUS_DRIVER)
    write(c.DRIVER_FEATURES_SEL, 1)
    write(c.DRIVER_FEATURES, 1 << (c.F_VERSION_1 - 32))
    ready = c.STATUS_ACKNOWLEDGE | c.STATUS_DRIVER | c.STATUS_FEATURES_OK
    write(c.STATUS, ready)
    write(c.STATUS, ready | c.STATUS_DRIVER_OK)


def test_virtio_devices_get_windows_served_on_their_loops() -> None:
    """A bare VirtioDevice is served on the main loop, a VirtioSlot on its iothread's (the
    device is activated by the loop it was given); both are recorded under their ids."""
    parts = Parts()
    a, b = Rng("a"), Rng("b")
    assert parts.create(lambda ctx, item: a) is a
    assert parts.create(lambda ctx, item: VirtioSlot(b, "io1")) is b
    assert [t.device for t in parts.slots.transports()] == [a, b]
    assert parts.table.items() == [("a", a), ("b", b)]
    for transport in parts.slots.transports():
        driver_ok(parts, transport.base)
    MAIN.run_once(0)
    assert a.active and not b.active
    IO1.run_once(0)
    assert b.active


def test_register_devices_get_their_bus_windows() -> None:
    """PioWindow and MmioWindow put the device on that bus at that base, named by its id."""
    parts = Parts()
    port, regs = Port("p"), Port("m")
    parts.create(lambda ctx, item: PioWindow(port, 0x5A0, 1))
    parts.create(lambda ctx, item: MmioWindow(regs, 0xD100_0000, 0x1000))
    assert parts.pio.find(0x5A0) == (port, 0)
    assert parts.mmio.find(0xD100_0010) == (regs, 0x10)
    assert [r.name for r in parts.mmio.ranges()] == ["m"]
    assert parts.table.get("p") is port and parts.table.get("m") is regs


def test_a_used_id_or_an_overlap_is_refused_and_the_new_device_closed() -> None:
    """A second device with an id in use, or a window overlapping another, is a ConfigError
    naming it; the device that could not be added is closed, the first one is not."""
    parts = Parts()
    first, twin, overlap = Port("p"), Port("p"), Port("q")
    parts.create(lambda ctx, item: PioWindow(first, 0x5A0, 2))
    with pytest.raises(ConfigError, match="duplicate device id 'p'"):
        parts.create(lambda ctx, item: PioWindow(twin, 0x600, 1))
    with pytest.raises(ConfigError, match=r"device q: pio: q at 0x5a1.* overlaps p"):
        parts.create(lambda ctx, item: PioWindow(overlap, 0x5A1, 1))
    assert (first.closed, twin.closed, overlap.closed) == (0, 1, 1)
    assert parts.table.items() == [("p", first)]


@pytest.mark.parametrize(("factory", "message"), [
    (lambda ctx, item: ctx.add_virtio_device(Rng("r")),
     r"plugin acme: device thing: the factory failed: AttributeError"),
    (lambda ctx, item: None, r"plugin acme: device thing: the factory returned None, not a"
                             r" device \(since plugin API 1\.1"),
    (lambda ctx, item: "rng", r"returned 'rng', not a device"),
])
def test_a_broken_factory_is_a_plugin_error_naming_it(factory: Any, message: str) -> None:
    """A factory written for the old contract (attaching by itself, returning nothing) or
    returning something else is refused at start-up with the plugin's name."""
    with pytest.raises(PluginError, match=message):
        Parts().create(factory)


def test_a_config_error_from_the_factory_goes_through() -> None:
    """The factory's own ConfigError (naming the option) reaches the user as it is."""
    def refuses(ctx: Any, item: dict[str, Any]) -> Any:
        raise ConfigError("-thing file: /x: No such file")

    with pytest.raises(ConfigError, match=r"^-thing file: /x: No such file$"):
        Parts().create(refuses)


def test_close_all_closes_every_device_once_even_if_one_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    """At exit each recorded device is closed once; one that raises is logged and the
    others are still closed."""
    parts = Parts()
    good, bad, rng = Port("good"), Port("bad"), Rng("rng")

    def explode() -> None:
        raise OSError("busy")

    bad.close = explode  # type: ignore[method-assign]
    for device in (good, rng):
        parts.create(lambda ctx, item, d=device: d)
    parts.create(lambda ctx, item: PioWindow(bad, 0x700, 1))
    parts.table.close_all()
    assert good.closed == 1 and rng.closed == 1
    assert "closing device bad failed" in caplog.text
