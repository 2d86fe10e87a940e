"""vhost=on: the refusal on a host without /dev/vhost-net, and the vhost-net ioctl sequence
(recorded, not sent: this host has no vhost-net) when a driver becomes ready."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from stratovmm_net import vhost as vhost_mod
from stratovmm_net.device import F_MRG_RXBUF, RX, TX
from stratovmm_net.tap import Tap
from stratovmm_net.vhost import VHOST_NET_SET_BACKEND, VhostNetDevice, check_vhost, open_vhost_net

from stratovmm.api import (
    VHOST_GET_VRING_BASE,
    VHOST_SET_FEATURES,
    VHOST_SET_MEM_TABLE,
    VHOST_SET_VRING_ADDR,
    VHOST_SET_VRING_BASE,
    VHOST_SET_VRING_CALL,
    VHOST_SET_VRING_KICK,
    VHOST_SET_VRING_NUM,
    ConfigError,
    EventLoop,
    VhostBackend,
)
from stratovmm.testing import spec as c
from stratovmm.testing.harness import DeviceHarness

pytestmark = pytest.mark.unit

HVA_BASE = 0x7F00_0000_0000
VHOST_FEATURES = ((1 << c.F_VERSION_1) | (1 << c.F_EVENT_IDX) | (1 << c.F_INDIRECT_DESC)
                  | (1 << F_MRG_RXBUF))


class Recorder:
    """Stands in for fcntl.ioctl on /dev/vhost-net: keeps (request, argument) pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []
        self.refused: set[int] = set()      # requests that fail with EINVAL

    def __call__(self, fd: int, request: int, arg: bytes = b"") -> bytes:
        self.calls.append((request, bytes(arg)))
        if request in self.refused:
            raise OSError(22, "Invalid argument")
        return bytes(arg)

    def of(self, request: int) -> list[bytes]:
        return [arg for req, arg in self.calls if req == request]


class Rig:
    def __init__(self, vhost_features: int = VHOST_FEATURES) -> None:
        self.ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.recorder = Recorder()
        self.loop = EventLoop("vhost-test")
        tap = Tap(self.ours.fileno(), "fake0", 0)
        tap.set_offload = lambda flags: None  # type: ignore[method-assign]
        self.vhost = VhostBackend(-1, vhost_features, "/dev/vhost-net", self.recorder)
        self.device = VhostNetDevice("v0", tap, bytes.fromhex("525400000001"), self.loop,
                                     self.vhost)
        self.h = DeviceHarness(self.device, memory_size=4 << 20, queue_size=64, loop=self.loop)
        memory: Any = self.h.memory
        memory.host_address = lambda region: HVA_BASE + region.offset

    def close(self) -> None:
        self.device.close()
        self.peer.close()
        self.loop.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_vhost_on_without_the_device_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /dev/vhost-net: the option is named and the missing device is said."""
    monkeypatch.setattr(vhost_mod, "VHOST_NET_PATH", "/nonexistent/vhost-net")
    with pytest.raises(ConfigError, match=r"-netdev id=n0 vhost: vhost=on needs"
                                          r" /nonexistent/vhost-net, which this host"):
        check_vhost("-netdev id=n0 vhost")
    with pytest.raises(ConfigError, match="vhost=on needs"):
        open_vhost_net("-netdev id=n0 vhost")


def test_driver_ok_hands_both_rings_and_the_tap_to_vhost(rig: Rig) -> None:
    """On DRIVER_OK: features, memory table (guest → host addresses), then per ring its size,
    base, addresses, kick and call eventfds, and the tap as backend."""
    assert rig.h.start(event_idx=True) & c.STATUS_DRIVER_OK
    rec = rig.recorder
    (features,) = rec.of(VHOST_SET_FEATURES)
    assert struct.unpack("<Q", features)[0] == VHOST_FEATURES
    (table,) = rec.of(VHOST_SET_MEM_TABLE)
    assert struct.unpack_from("<II", table) == (1, 0)
    assert struct.unpack_from("<QQQQ", table, 8) == (0, 4 << 20, HVA_BASE, 0)
    assert [struct.unpack("<II", a) for a in rec.of(VHOST_SET_VRING_NUM)] == [(0, 64), (1, 64)]
    assert [struct.unpack("<II", a) for a in rec.of(VHOST_SET_VRING_BASE)] == [(0, 0), (1, 0)]
    for index, arg in enumerate(rec.of(VHOST_SET_VRING_ADDR)):
        q = rig.h.queues[index]
        assert struct.unpack("<IIQQQQ", arg) == (index, 0, HVA_BASE + q.desc_table,
                                                  HVA_BASE + q.used_ring,
                                                  HVA_BASE + q.avail_ring, 0)
    kicks = [struct.unpack("<Ii", a) for a in rec.of(VHOST_SET_VRING_KICK)]
    calls = [struct.unpack("<Ii", a) for a in rec.of(VHOST_SET_VRING_CALL)]
    assert [i for i, _fd in kicks] == [0, 1] and [i for i, _fd in calls] == [0, 1]
    backends = [struct.unpack("<Ii", a) for a in rec.of(VHOST_NET_SET_BACKEND)]
    assert backends == [(0, rig.ours.fileno()), (1, rig.ours.fileno())]


def test_kicks_and_calls_are_relayed(rig: Rig) -> None:
    """A guest kick reaches vhost's kick eventfd; vhost's call raises the mmio interrupt."""
    rig.h.start()
    kick_tx = struct.unpack("<Ii", rig.recorder.of(VHOST_SET_VRING_KICK)[TX])[1]
    call_rx = struct.unpack("<Ii", rig.recorder.of(VHOST_SET_VRING_CALL)[RX])[1]
    while True:                                  # activation kicked both rings once
        try:
            os.eventfd_read(kick_tx)
        except BlockingIOError:
            break
    rig.h.kick(TX)
    assert os.eventfd_read(kick_tx) == 1
    before = rig.h.interrupts
    os.eventfd_write(call_rx, 1)
    rig.loop.run_once(0.5)
    assert rig.h.interrupts == before + 1
    assert rig.h.transport.interrupt_status & c.INT_USED_RING


def test_reset_takes_the_rings_back(rig: Rig) -> None:
    """A driver reset detaches the tap from both rings and reads back their base indices."""
    rig.h.start()
    rig.h.write_reg(c.STATUS, 0)
    backends = [struct.unpack("<Ii", a) for a in rig.recorder.of(VHOST_NET_SET_BACKEND)]
    assert backends[-2:] == [(0, -1), (1, -1)]
    assert len(rig.recorder.of(VHOST_GET_VRING_BASE)) == 2


def test_ring_features_are_limited_to_what_vhost_offers() -> None:
    """A vhost without MRG_RXBUF or EVENT_IDX: those bits are not offered to the driver;
    device bits (MAC, STATUS) still are."""
    r = Rig(vhost_features=(1 << c.F_VERSION_1) | (1 << c.F_INDIRECT_DESC))
    try:
        offered = r.h.device_features()
    finally:
        r.close()
    assert not offered & (1 << F_MRG_RXBUF) and not offered & (1 << c.F_EVENT_IDX)
    assert offered & (1 << c.F_VERSION_1) and offered & (1 << 5) and offered & (1 << 16)


def test_a_refused_ring_set_up_puts_the_device_in_needs_reset() -> None:
    """vhost refusing an ioctl at DRIVER_OK: logged, counted, DEVICE_NEEDS_RESET."""
    r = Rig()
    r.recorder.refused.add(VHOST_SET_VRING_ADDR)
    try:
        status = r.h.start()
        assert status & c.STATUS_DEVICE_NEEDS_RESET
        assert r.device.counters["errors"] == 1
    finally:
        r.close()
