"""RegisterDevice: the base for non-virtio register-window devices (locking, counters,
guest faults), driven the way the bus drives it."""

from __future__ import annotations

import logging

import pytest

from stratovmm.devices.counters import COMMON_COUNTERS
from stratovmm.devices.regdevice import RegisterDevice
from stratovmm.errors import GuestError
from stratovmm.machine.bus import Bus


class Counter(RegisterDevice):
    """A 4-byte counter at offset 0: each read returns it and counts up; a write sets it."""

    def __init__(self) -> None:
        super().__init__("counter", 0x1000)
        self.value = 0

    def read_register(self, offset: int, size: int) -> bytes:
        if (offset, size) != (0, 4):
            raise GuestError("only the 4-byte register at 0 is readable")
        value, self.value = self.value, self.value + 1
        return value.to_bytes(4, "little")

    def write_register(self, offset: int, data: bytes) -> None:
        if (offset, len(data)) != (0, 4):
            raise GuestError("only the 4-byte register at 0 is writable")
        self.value = int.from_bytes(data, "little")


def test_reads_and_writes_reach_the_registers_through_the_bus() -> None:
    """The bus hands accesses to the hooks; the common counters follow."""
    bus = Bus("mmio")
    device = Counter()
    bus.insert(device, 0xD100_0000, device.window, "counter")
    assert bus.read(0xD100_0000, 4) == (0).to_bytes(4, "little")
    assert bus.read(0xD100_0000, 4) == (1).to_bytes(4, "little")
    assert bus.write(0xD100_0000, (100).to_bytes(4, "little"))
    assert bus.read(0xD100_0000, 4) == (100).to_bytes(4, "little")
    stats = device.stats()
    assert set(COMMON_COUNTERS) <= set(stats)
    assert stats == {"requests": 4, "bytes_read": 12, "bytes_written": 4, "errors": 0,
                     "guest_faults": 0}


@pytest.mark.parametrize(("offset", "size"), [(4, 4), (0, 2), (0xFFE, 4), (0x1000, 1)])
def test_a_bad_read_is_all_ones_and_a_counted_fault(offset: int, size: int) -> None:
    """Undecoded or out-of-window reads answer all-ones, exactly size bytes (§2.7 spirit:
    the guest is hostile, the device keeps working)."""
    device = Counter()
    assert device.read(offset, size) == b"\xff" * size
    assert device.stats()["guest_faults"] == 1
    assert device.read(0, 4) == (0).to_bytes(4, "little")


def test_a_bad_write_changes_nothing_and_is_logged_once(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """Bad writes are dropped and counted; the log gets one line however many come."""
    device = Counter()
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            device.write(8, b"\x01\x02\x03\x04")
        device.write(0x0FFF, b"\x01\x02")
    assert device.value == 0
    assert device.stats()["guest_faults"] == 51
    assert caplog.text.count("bad guest input (write)") == 1
    assert "counter: bad guest input (write): 4-byte write at 0x8" in caplog.text


def test_a_device_without_hooks_refuses_everything() -> None:
    """The defaults decode nothing: a bare RegisterDevice is all faults, never an exception."""
    device = RegisterDevice("blank", 0x10)
    assert device.read(0, 1) == b"\xff"
    device.write(0, b"\x00")
    device.close()
    assert device.stats()["guest_faults"] == 2
