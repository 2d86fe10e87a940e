"""vhost-vsock (StratoVirt v0.3's backend): the exact ioctl sequence from opening
/dev/vhost-vsock to DRIVER_OK and back on reset, the guest-CID errors, and the features and
config space the guest sees.

This host has no /dev/vhost-vsock, so the sequence is recorded, not sent: the "device" is a
regular file (a real fd) and the requests go to a recorder in place of ``fcntl.ioctl``.  This
is the one fake the project allows, for a device that does not exist here; the backend has
not run against the kernel's vhost_vsock.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stratovmm_vsock.device import EVENT, RX, TX
from stratovmm_vsock.packet import F_STREAM
from stratovmm_vsock.vhost import (
    VHOST_VSOCK_SET_GUEST_CID,
    VHOST_VSOCK_SET_RUNNING,
    VhostVsockDevice,
    adopt_vhost_vsock,
    open_vhost_vsock,
)

from stratovmm import api
from stratovmm.api import (
    VHOST_GET_FEATURES,
    VHOST_GET_VRING_BASE,
    VHOST_SET_OWNER,
    ConfigError,
    EventLoop,
)
from stratovmm.testing import spec as c
from stratovmm.testing.harness import DeviceHarness

CID = 42
HVA_BASE = 0x7F00_0000_0000
# What the kernel's vhost_vsock offers (VHOST_VSOCK_FEATURES): the ring bits, ACCESS_PLATFORM,
# SEQPACKET, NOTIFY_ON_EMPTY and ANY_LAYOUT.
VHOST_FEATURES = ((1 << c.F_VERSION_1) | (1 << c.F_INDIRECT_DESC) | (1 << c.F_EVENT_IDX)
                  | (1 << 33) | (1 << 1) | (1 << 24) | (1 << 27))
NAMES = {value: name for name, value in vars(api).items()
         if name.startswith("VHOST_") and isinstance(value, int) and name != "VHOST_VIRTIO"}
NAMES[VHOST_VSOCK_SET_GUEST_CID] = "VHOST_VSOCK_SET_GUEST_CID"
NAMES[VHOST_VSOCK_SET_RUNNING] = "VHOST_VSOCK_SET_RUNNING"
RING = ["VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_ADDR",
        "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL"]


class Recorder:
    """Stands in for ``fcntl.ioctl`` on /dev/vhost-vsock: keeps (request name, argument)."""

    def __init__(self, refuse: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.refuse = refuse or {}

    def __call__(self, fd: int, request: int, arg: bytes = b"") -> bytes:
        self.calls.append((NAMES.get(request, hex(request)), bytes(arg)))
        if request in self.refuse:
            raise OSError(self.refuse[request], os.strerror(self.refuse[request]))
        if request == VHOST_GET_FEATURES:
            return struct.pack("<Q", VHOST_FEATURES)
        if request == VHOST_GET_VRING_BASE:
            return struct.pack("<II", struct.unpack("<II", arg)[0], 0)
        return bytes(arg)

    def names(self) -> list[str]:
        return [name for name, _arg in self.calls]

    def args(self, name: str) -> list[bytes]:
        return [arg for n, arg in self.calls if n == name]


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.recorder = Recorder()
        self.device_file = tmp_path / "vhost-vsock"
        self.device_file.touch()
        self.backend = open_vhost_vsock(CID, "-device vsock", str(self.device_file),
                                        self.recorder)
        self.loop = EventLoop("vhost-vsock-test")
        self.device = VhostVsockDevice("vsock0", CID, self.backend, self.loop)
        self.h = DeviceHarness(self.device, memory_size=4 << 20, queue_size=128,
                               loop=self.loop)
        memory: Any = self.h.memory
        memory.host_address = lambda region: HVA_BASE + region.offset

    def close(self) -> None:
        self.device.close()
        self.loop.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_request_numbers() -> None:
    """VHOST_VSOCK_SET_GUEST_CID = _IOW(0xAF, 0x60, __u64), SET_RUNNING = _IOW(0xAF, 0x61, int)
    (the core's test compares these with <linux/vhost.h>)."""
    assert (VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING) == (0x4008AF60, 0x4004AF61)


def test_open_owns_the_device_and_sets_the_guest_cid(rig: Rig) -> None:
    """Start-up: SET_OWNER, GET_FEATURES, then SET_GUEST_CID with the CID as a u64."""
    assert rig.recorder.names() == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES",
                                    "VHOST_VSOCK_SET_GUEST_CID"]
    assert rig.recorder.args("VHOST_VSOCK_SET_GUEST_CID") == [struct.pack("<Q", CID)]


def test_driver_ok_hands_rx_and_tx_to_vhost_then_runs_it(rig: Rig) -> None:
    """DRIVER_OK: ring features, memory table, rx and tx rings (not the event queue), then
    SET_RUNNING 1, in that order."""
    rig.recorder.calls.clear()
    assert rig.h.start(event_idx=True) & c.STATUS_DRIVER_OK
    assert rig.recorder.names() == ["VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE", *RING, *RING,
                                    "VHOST_VSOCK_SET_RUNNING"]
    (features,) = rig.recorder.args("VHOST_SET_FEATURES")
    acked = struct.unpack("<Q", features)[0]
    assert acked == (1 << c.F_VERSION_1) | (1 << c.F_INDIRECT_DESC) | (1 << c.F_EVENT_IDX)
    assert [struct.unpack("<II", a) for a in rig.recorder.args("VHOST_SET_VRING_NUM")] == [
        (RX, 128), (TX, 128)]
    for index, arg in enumerate(rig.recorder.args("VHOST_SET_VRING_ADDR")):
        q = rig.h.queues[index]
        assert struct.unpack("<IIQQQQ", arg) == (index, 0, HVA_BASE + q.desc_table,
                                                  HVA_BASE + q.used_ring,
                                                  HVA_BASE + q.avail_ring, 0)
    assert rig.recorder.args("VHOST_VSOCK_SET_RUNNING") == [struct.pack("<i", 1)]


def test_reset_stops_vhost_then_takes_the_rings_back(rig: Rig) -> None:
    """A driver reset: SET_RUNNING 0, then GET_VRING_BASE for rx and tx."""
    rig.h.start()
    rig.recorder.calls.clear()
    rig.h.write_reg(c.STATUS, 0)
    assert rig.recorder.names() == ["VHOST_VSOCK_SET_RUNNING", "VHOST_GET_VRING_BASE",
                                    "VHOST_GET_VRING_BASE"]
    assert rig.recorder.args("VHOST_VSOCK_SET_RUNNING") == [struct.pack("<i", 0)]
    assert [struct.unpack("<II", a)[0] for a in rig.recorder.args("VHOST_GET_VRING_BASE")] == [
        RX, TX]


def test_rx_and_tx_kicks_are_relayed_the_event_queue_is_not(rig: Rig) -> None:
    """Kicks on rx and tx reach vhost's kick eventfds; the event queue stays with us."""
    rig.h.start()
    kicks = [struct.unpack("<Ii", a)[1] for a in rig.recorder.args("VHOST_SET_VRING_KICK")]
    for fd in kicks:
        os.eventfd_read(fd)             # the kick activation passed on
    rig.h.kick(TX)
    rig.h.kick(EVENT)
    assert os.eventfd_read(kicks[TX]) == 1
    with pytest.raises(BlockingIOError):
        os.eventfd_read(kicks[RX])


def test_guest_sees_its_cid_and_stream_feature(rig: Rig) -> None:
    """Config space holds the CID as le64 (§5.10.4); STREAM and the ring bits are offered,
    SEQPACKET (which vhost has but we do not) is not."""
    assert struct.unpack("<Q", rig.h.read_config(0, 8))[0] == CID
    offered = rig.h.device_features()
    assert offered & (1 << F_STREAM) and offered & (1 << c.F_VERSION_1)
    assert not offered & (1 << 1)


def test_a_refused_ring_puts_the_device_in_needs_reset(tmp_path: Path) -> None:
    """vhost refusing SET_RUNNING at DRIVER_OK: logged, counted, DEVICE_NEEDS_RESET."""
    r = Rig(tmp_path)
    r.recorder.refuse[VHOST_VSOCK_SET_RUNNING] = errno.EINVAL
    try:
        assert r.h.start() & c.STATUS_DEVICE_NEEDS_RESET
        assert r.device.counters["errors"] == 1
    finally:
        r.close()


def test_cid_in_use_names_guest_cid(tmp_path: Path) -> None:
    """EADDRINUSE from SET_GUEST_CID (another VM holds the CID) names -device vsock
    guest-cid; the fd is closed."""
    device_file = tmp_path / "vhost-vsock"
    device_file.touch()
    recorder = Recorder(refuse={VHOST_VSOCK_SET_GUEST_CID: errno.EADDRINUSE})
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigError, match="-device vsock guest-cid: 42 is in use by another"
                                          " VM on this host"):
        open_vhost_vsock(CID, "-device vsock", str(device_file), recorder)
    assert len(os.listdir("/proc/self/fd")) == fds
    recorder = Recorder(refuse={VHOST_VSOCK_SET_GUEST_CID: errno.EINVAL})
    with pytest.raises(ConfigError, match=r"guest-cid: .* refused CID 42: Invalid argument"):
        open_vhost_vsock(CID, "-device vsock", str(device_file), recorder)


def test_vhostfd_is_adopted_with_the_same_sequence(tmp_path: Path) -> None:
    """An inherited fd (vhostfd=) is not reopened: SET_OWNER, GET_FEATURES and SET_GUEST_CID
    go to that fd, and the backend serves the device from it."""
    fd = os.open(tmp_path / "vhost-vsock", os.O_RDWR | os.O_CREAT)
    recorder = Recorder()
    seen: list[int] = []

    def on_fd(used: int, request: int, arg: bytes = b"") -> bytes:
        seen.append(used)
        return recorder(used, request, arg)

    backend = adopt_vhost_vsock(fd, CID, "-device vhost-vsock-device", on_fd)
    try:
        assert recorder.names() == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES",
                                    "VHOST_VSOCK_SET_GUEST_CID"]
        assert recorder.args("VHOST_VSOCK_SET_GUEST_CID") == [struct.pack("<Q", CID)]
        assert set(seen) == {fd} and backend.fd == fd and backend.features == VHOST_FEATURES
    finally:
        backend.close()


@pytest.mark.parametrize(("refuse", "needle"), [
    ({VHOST_SET_OWNER: errno.ENOTTY}, "vhostfd: fd .* is not a usable vhost-vsock fd"),
    ({VHOST_GET_FEATURES: errno.ENOTTY}, "vhostfd: fd .* is not a usable vhost-vsock fd"),
    ({VHOST_VSOCK_SET_GUEST_CID: errno.ENOTTY}, "vhostfd guest-cid: .* refused CID 42"),
    ({VHOST_VSOCK_SET_GUEST_CID: errno.EADDRINUSE}, "vhostfd guest-cid: 42 is in use"),
])
def test_a_vhostfd_that_is_not_vhost_vsock_is_refused(tmp_path: Path, refuse: dict[int, int],
                                                      needle: str) -> None:
    """A fd on which a vhost or vhost-vsock request fails is refused, naming vhostfd."""
    fd = os.open(tmp_path / "not-vhost", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(ConfigError, match=needle):
            adopt_vhost_vsock(fd, CID, "-device vhost-vsock-device", Recorder(refuse))
    finally:
        try:
            os.close(fd)
        except OSError:
            pass                      # a refused CID closes the backend, as for the device


def test_a_regular_file_fd_is_refused_by_the_kernel(tmp_path: Path) -> None:
    """With the real ioctl, a regular file's fd (not a vhost device) fails VHOST_SET_OWNER
    (ENOTTY) and is refused as not a usable vhost-vsock fd."""
    fd = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(ConfigError, match=r"vhostfd: fd \d+ is not a usable vhost-vsock"
                                              r" fd \(Inappropriate ioctl"):
            adopt_vhost_vsock(fd, CID, "-device vhost-vsock-device")
    finally:
        os.close(fd)


def test_a_closed_vhostfd_is_refused() -> None:
    """A vhostfd= the parent did not pass (not open here) is refused, naming it."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ConfigError, match=f"vhostfd: fd {fd} is not open"):
        adopt_vhost_vsock(fd, CID, "-device vhost-vsock-device")
