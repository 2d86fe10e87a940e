"""The core's vhost-kernel protocol (``stratovmm.virtio.vhost``), shared by the net and vsock
plugins: request numbers as <linux/vhost.h> defines them, and the exact ioctl sequence of opening a
vhost device, handing a device's rings over at DRIVER_OK and taking them back on reset.

This host has no /dev/vhost-* device, so the sequence is recorded, not sent: the "device"
is a regular file (a real fd to open and close) and the requests go to a recorder in place
of ``fcntl.ioctl``.  This is the one fake the project allows, for a device that does not
exist here; the vhost devices have not run against a real kernel worker.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stratovmm.errors import ConfigError
from stratovmm.host.eventloop import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.virtio import constants as c
from stratovmm.virtio import vhost
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.vhost import VhostBackend, VhostRings

HVA_BASE = 0x7F00_0000_0000
RINGS = (1 << c.F_VERSION_1) | (1 << c.F_INDIRECT_DESC) | (1 << c.F_EVENT_IDX)
NAMES = {value: name for name, value in vars(vhost).items()
         if name.startswith("VHOST_") and isinstance(value, int) and name != "VHOST_VIRTIO"}


class Recorder:
    """Stands in for ``fcntl.ioctl`` on a vhost fd: keeps (request name, argument)."""

    def __init__(self, features: int = RINGS) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.features = features

    def __call__(self, fd: int, request: int, arg: bytes = b"") -> bytes:
        self.calls.append((NAMES.get(request, hex(request)), bytes(arg)))
        if request == vhost.VHOST_GET_FEATURES:
            return struct.pack("<Q", self.features)
        if request == vhost.VHOST_GET_VRING_BASE:
            return struct.pack("<II", struct.unpack("<II", arg)[0], 7)
        return bytes(arg)

    def names(self) -> list[str]:
        return [name for name, _arg in self.calls]


class TwoRings(VirtioDevice):
    """A device whose two rings a vhost worker serves (as vhost-net's and vhost-vsock's)."""

    DEVICE_TYPE = c.ID_RNG
    QUEUE_SIZES = (64, 64)

    def __init__(self, backend: VhostBackend, loop: EventLoop) -> None:
        super().__init__("two")
        self.rings = VhostRings(backend, loop, 2, RINGS)

    @property
    def avail_features(self) -> int:
        return self.rings.offered(super().avail_features)

    def on_activate(self) -> None:
        self.rings.start(self)

    def handle_queue(self, index: int) -> None:
        self.rings.kick(index)

    def on_reset(self) -> None:
        self.rings.stop(self.id)


class Rig:
    def __init__(self, tmp_path: Path, features: int = RINGS) -> None:
        self.recorder = Recorder(features)
        device_file = tmp_path / "vhost-test"
        device_file.touch()
        self.backend = VhostBackend.open(str(device_file), "-test", self.recorder)
        self.loop = EventLoop("vhost-test")
        self.device = TwoRings(self.backend, self.loop)
        self.h = DeviceHarness(self.device, memory_size=4 << 20, queue_size=64, loop=self.loop)
        memory: Any = self.h.memory
        memory.host_address = lambda region: HVA_BASE + region.offset

    def close(self) -> None:
        self.device.rings.close("two")
        self.loop.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_open_takes_ownership_and_reads_features(rig: Rig) -> None:
    """Opening: VHOST_SET_OWNER, then VHOST_GET_FEATURES, and nothing else."""
    assert rig.recorder.names() == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES"]
    assert rig.backend.features == RINGS and rig.backend.fd >= 0


def test_driver_ok_hands_the_rings_over_in_order(rig: Rig) -> None:
    """DRIVER_OK: features (ring bits only), the memory table, then per ring its size, base,
    addresses (desc, used, avail as struct vhost_vring_addr orders them), kick, call."""
    rig.recorder.calls.clear()
    assert rig.h.start(event_idx=True) & c.STATUS_DRIVER_OK
    ring = ["VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_ADDR",
            "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL"]
    assert rig.recorder.names() == ["VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE", *ring, *ring]
    args = [arg for _name, arg in rig.recorder.calls]
    assert struct.unpack("<Q", args[0])[0] == RINGS
    assert struct.unpack("<IIQQQQ", args[1]) == (1, 0, 0, 4 << 20, HVA_BASE, 0)
    for index in (0, 1):
        num, base, addr, kick, call = args[2 + 5 * index: 7 + 5 * index]
        q = rig.h.queues[index]
        assert struct.unpack("<II", num) == (index, 64)
        assert struct.unpack("<II", base) == (index, 0)
        assert struct.unpack("<IIQQQQ", addr) == (index, 0, HVA_BASE + q.desc_table,
                                                   HVA_BASE + q.used_ring,
                                                   HVA_BASE + q.avail_ring, 0)
        assert struct.unpack("<Ii", kick)[0] == index and struct.unpack("<Ii", call)[0] == index


def test_kicks_go_to_vhost_and_calls_raise_the_interrupt(rig: Rig) -> None:
    """A guest kick reaches the ring's kick eventfd; vhost's call eventfd raises the mmio
    interrupt with the used-ring bit (the driver reads InterruptStatus first, §4.2.2)."""
    rig.h.start()
    kicks = [struct.unpack("<Ii", a)[1] for n, a in rig.recorder.calls
             if n == "VHOST_SET_VRING_KICK"]
    calls = [struct.unpack("<Ii", a)[1] for n, a in rig.recorder.calls
             if n == "VHOST_SET_VRING_CALL"]
    for fd in kicks:                    # activation passed one kick per ring
        assert os.eventfd_read(fd) == 1
    rig.h.kick(1)
    assert os.eventfd_read(kicks[1]) == 1
    with pytest.raises(BlockingIOError):
        os.eventfd_read(kicks[0])
    before = rig.h.interrupts
    os.eventfd_write(calls[0], 1)
    rig.loop.run_once(0.5)
    assert rig.h.interrupts == before + 1
    assert rig.h.transport.interrupt_status & c.INT_USED_RING


def test_reset_stops_every_ring(rig: Rig) -> None:
    """A driver reset reads back each ring's base (which stops it); a second reset does
    nothing more."""
    rig.h.start()
    rig.recorder.calls.clear()
    rig.h.write_reg(c.STATUS, 0)
    assert rig.recorder.names() == ["VHOST_GET_VRING_BASE", "VHOST_GET_VRING_BASE"]
    assert not rig.device.rings.running
    rig.device.rings.stop("two")
    assert rig.recorder.names() == ["VHOST_GET_VRING_BASE", "VHOST_GET_VRING_BASE"]


def test_ring_bits_are_offered_only_where_vhost_has_them(tmp_path: Path) -> None:
    """A vhost without EVENT_IDX: that bit is not offered; bits vhost does not decide are."""
    r = Rig(tmp_path, features=(1 << c.F_VERSION_1) | (1 << c.F_INDIRECT_DESC))
    try:
        offered = r.h.device_features()
    finally:
        r.close()
    assert offered & (1 << c.F_VERSION_1) and not offered & (1 << c.F_EVENT_IDX)
    assert r.device.rings.offered(1 << 0) == 1 << 0


def test_open_failures_name_the_option(tmp_path: Path) -> None:
    """A missing device and a refused VHOST_SET_OWNER are ConfigErrors naming the option."""
    with pytest.raises(ConfigError, match="-device x: cannot open /nonexistent/vhost"):
        VhostBackend.open("/nonexistent/vhost", "-device x")
    device_file = tmp_path / "vhost"
    device_file.touch()

    def busy(fd: int, request: int, arg: bytes = b"") -> bytes:
        raise OSError(16, "Device or resource busy")

    with pytest.raises(ConfigError, match=r"-device x: .*vhost: Device or resource busy"):
        VhostBackend.open(str(device_file), "-device x", busy)


def test_memory_table_is_where_each_region_is_mapped_here() -> None:
    """The table vhost gets is each RAM region's guest address, size and our address of
    it (through the memory protocol: bytes written there are the guest's bytes); a guest
    address outside every region is refused."""
    memory = BytearrayGuestMemory(regions=[(0, 4096), (1 << 32, 8192)])
    memory.write((1 << 32) + 8, b"ring")
    table = vhost.memory_table(memory)
    assert [(gpa, size) for gpa, size, _hva in table] == [(0, 4096), (1 << 32, 8192)]
    assert ctypes.string_at(vhost.host_address(table, (1 << 32) + 8), 4) == b"ring"
    with pytest.raises(ValueError, match="outside RAM"):
        vhost.host_address([(0, 4096, HVA_BASE)], 8192)


C_PROGRAM = """
#include <stdio.h>
#include <linux/vhost.h>
int main(void) {
    printf("%lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu %lu\\n",
        (unsigned long)VHOST_GET_FEATURES, (unsigned long)VHOST_SET_FEATURES,
        (unsigned long)VHOST_SET_OWNER, (unsigned long)VHOST_SET_MEM_TABLE,
        (unsigned long)VHOST_SET_VRING_NUM, (unsigned long)VHOST_SET_VRING_ADDR,
        (unsigned long)VHOST_SET_VRING_BASE, (unsigned long)VHOST_GET_VRING_BASE,
        (unsigned long)VHOST_SET_VRING_KICK, (unsigned long)VHOST_SET_VRING_CALL,
        (unsigned long)VHOST_NET_SET_BACKEND, (unsigned long)VHOST_VSOCK_SET_GUEST_CID,
        (unsigned long)VHOST_VSOCK_SET_RUNNING);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_request_numbers_match_linux_vhost_h(tmp_path: Path) -> None:
    """Every request number (core, net's and vsock's) equals the <linux/vhost.h> macro."""
    if not Path("/usr/include/linux/vhost.h").exists():
        pytest.skip("no <linux/vhost.h> here")
    source = tmp_path / "vhost.c"
    source.write_text(C_PROGRAM)
    subprocess.run(["gcc", "-o", str(tmp_path / "vhost"), str(source)], check=True)
    values = [int(v) for v in subprocess.run([str(tmp_path / "vhost")], capture_output=True,
                                             text=True, check=True).stdout.split()]
    ours = [vhost.VHOST_GET_FEATURES, vhost.VHOST_SET_FEATURES, vhost.VHOST_SET_OWNER,
            vhost.VHOST_SET_MEM_TABLE, vhost.VHOST_SET_VRING_NUM, vhost.VHOST_SET_VRING_ADDR,
            vhost.VHOST_SET_VRING_BASE, vhost.VHOST_GET_VRING_BASE, vhost.VHOST_SET_VRING_KICK,
            vhost.VHOST_SET_VRING_CALL, vhost.vhost_iow(0x30, 8), vhost.vhost_iow(0x60, 8),
            vhost.vhost_iow(0x61, 4)]
    assert values == ours
