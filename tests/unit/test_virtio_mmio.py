"""The virtio-mmio v2 transport (virtio 1.2 §4.2.2) through its registers."""

from __future__ import annotations

import os
import resource
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from stratovmm.host.eventloop import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.device import VirtioDevice

ACK, DRV, FOK, DOK = (c.STATUS_ACKNOWLEDGE, c.STATUS_DRIVER, c.STATUS_FEATURES_OK,
                      c.STATUS_DRIVER_OK)


class EchoDevice(VirtioDevice):
    """Two queues; completes every chain with its readable length; config = 8 bytes."""

    DEVICE_TYPE = 42
    QUEUE_SIZES = (16, 8)

    def __init__(self) -> None:
        super().__init__("echo")
        self.resets = 0

    def device_features(self) -> int:
        return 1 << 3

    def config_space(self) -> bytes:
        return bytes(range(8))

    def handle_queue(self, index: int) -> None:
        self.serve(index, lambda chain: chain.readable_len)

    def on_reset(self) -> None:
        self.resets += 1


@pytest.fixture
def h() -> DeviceHarness:
    """A harness around a fresh EchoDevice."""
    return DeviceHarness(EchoDevice())


def test_identity_registers(h: DeviceHarness) -> None:
    """Magic, version 2 (modern), device id and vendor read as the spec says."""
    assert h.read_reg(c.MAGIC_VALUE) == 0x74726976
    assert h.read_reg(c.VERSION) == 2
    assert h.read_reg(c.DEVICE_ID) == 42
    assert h.read_reg(c.VENDOR_ID) == c.VENDOR


def test_features_are_64_bit_with_version_1(h: DeviceHarness) -> None:
    """Feature bits are read in two 32-bit halves; VERSION_1 (bit 32) is offered."""
    features = h.device_features()
    assert features & (1 << c.F_VERSION_1)
    assert features & (1 << 3)


def test_full_initialisation_activates_the_device(h: DeviceHarness) -> None:
    """ACK → DRIVER → FEATURES_OK → DRIVER_OK activates the device with its queues."""
    status = h.start()
    assert status == ACK | DRV | FOK | DOK
    assert h.transport.device.active
    assert len(h.transport.device.queues) == 2


def test_invalid_status_transition_is_ignored_and_counted(h: DeviceHarness) -> None:
    """Skipping a step (0 → DRIVER_OK) leaves the status unchanged and counts a fault."""
    h.write_reg(c.STATUS, ACK | DRV | FOK | DOK)
    assert h.read_reg(c.STATUS) == 0
    assert h.transport.device.counters["guest_faults"] == 1
    assert not h.transport.device.active


def test_features_outside_negotiation_are_ignored(h: DeviceHarness) -> None:
    """DriverFeatures written before DRIVER is ignored (§3.1.1)."""
    h.write_reg(c.DRIVER_FEATURES, 0xFFFFFFFF)
    assert h.transport.device.counters["guest_faults"] == 1


def test_unoffered_feature_keeps_features_ok_clear(h: DeviceHarness) -> None:
    """A driver accepting a bit we never offered does not get FEATURES_OK (§2.2.1)."""
    status = h.start(features=(1 << c.F_VERSION_1) | (1 << 7))
    assert not status & FOK


def test_legacy_driver_without_version_1_is_refused(h: DeviceHarness) -> None:
    """Without VIRTIO_F_VERSION_1 the modern transport refuses FEATURES_OK."""
    assert not h.start(features=1 << 3) & FOK


def test_queue_num_max_and_absent_queue(h: DeviceHarness) -> None:
    """QueueNumMax reports each queue's size, and 0 for queues the device lacks."""
    h.write_reg(c.QUEUE_SEL, 1)
    assert h.read_reg(c.QUEUE_NUM_MAX) == 8
    h.write_reg(c.QUEUE_SEL, 5)
    assert h.read_reg(c.QUEUE_NUM_MAX) == 0


def test_bad_ring_address_refuses_ready_and_flags_needs_reset(h: DeviceHarness) -> None:
    """A queue whose rings are outside RAM is not made ready; DEVICE_NEEDS_RESET is set."""
    h.write_reg(c.STATUS, ACK)
    h.write_reg(c.STATUS, ACK | DRV)
    h.write_reg(c.QUEUE_SEL, 0)
    h.write_reg(c.QUEUE_DESC_LOW, 0xFFFF0000)
    h.write_reg(c.QUEUE_DESC_HIGH, 0x10)
    h.write_reg(c.QUEUE_READY, 1)
    assert h.read_reg(c.QUEUE_READY) == 0
    assert h.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET


def test_non_32bit_register_access_is_refused(h: DeviceHarness) -> None:
    """§4.2.2.2: control registers take 32-bit aligned accesses only."""
    assert h.transport.read(c.MAGIC_VALUE, 2) == b"\0\0"
    h.transport.write(c.STATUS, b"\x01")
    assert h.read_reg(c.STATUS) == 0
    assert h.transport.faults == 2


def test_config_space_reads_any_width(h: DeviceHarness) -> None:
    """The device config space is readable at 8/16/32/64-bit widths, zero past its end."""
    assert h.read_config(0, 1) == b"\x00"
    assert h.read_config(2, 2) == b"\x02\x03"
    assert h.read_config(4, 8) == bytes([4, 5, 6, 7, 0, 0, 0, 0])


def test_kick_serves_the_queue_and_interrupts(h: DeviceHarness) -> None:
    """A notify runs the device on its loop; used ring filled; interrupt status bit 0 raised."""
    h.start()
    q = h.queues[0]
    from stratovmm.testing.virtqueue import Buffer

    head = q.add_chain([Buffer(h.alloc(32), 32)])
    h.kick(0)
    assert q.used_elements() == [(head, 32)]
    assert h.read_reg(c.INTERRUPT_STATUS) & c.INT_USED_RING
    assert h.interrupts == 1
    h.write_reg(c.INTERRUPT_ACK, c.INT_USED_RING)
    assert h.read_reg(c.INTERRUPT_STATUS) == 0


def test_config_change_bumps_generation(h: DeviceHarness) -> None:
    """signal_config raises interrupt bit 1 and changes ConfigGeneration (§4.2.3.3)."""
    before = h.read_reg(c.CONFIG_GENERATION)
    h.transport.signal_config()
    assert h.read_reg(c.CONFIG_GENERATION) != before
    assert h.read_reg(c.INTERRUPT_STATUS) & c.INT_CONFIG


def test_reset_clears_everything_and_resets_the_device(h: DeviceHarness) -> None:
    """Writing 0 to Status resets transport state and the device model."""
    h.start()
    device = h.transport.device
    assert isinstance(device, EchoDevice)
    before = device.resets
    h.write_reg(c.STATUS, 0)
    assert h.read_reg(c.STATUS) == 0
    h.write_reg(c.QUEUE_SEL, 0)
    assert h.read_reg(c.QUEUE_READY) == 0
    assert device.resets == before + 1 and not device.active


def test_queue_reconfiguration_while_ready_is_ignored(h: DeviceHarness) -> None:
    """Queue registers cannot change under a running queue."""
    h.start()
    h.write_reg(c.QUEUE_SEL, 0)
    h.write_reg(c.QUEUE_NUM, 2)
    assert h.transport.device.counters["guest_faults"] >= 1


def test_ring_protocol_error_sets_device_needs_reset(h: DeviceHarness) -> None:
    """A broken avail ring makes the device stop and ask for a reset (§2.1.2)."""
    h.start()
    q = h.queues[0]
    q.memory.write_u16(q.avail_ring + 2, 100)
    h.kick(0)
    assert h.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET
    assert h.read_reg(c.INTERRUPT_STATUS) & c.INT_CONFIG


def test_notify_for_absent_queue_is_counted(h: DeviceHarness) -> None:
    """A notify naming a queue that is not set up is a counted guest fault."""
    h.start()
    before = h.transport.faults
    h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", 7))
    assert h.transport.faults == before + 1


# -- reset ordering (§2.4) and host resource failures at DRIVER_OK --------------------------


def vcpu_write(h: DeviceHarness, offset: int, value: int) -> None:
    """A 32-bit driver store as a vCPU makes it: the device loop does not run meanwhile."""
    h.transport.write(offset, struct.pack("<I", value))


def negotiate(h: DeviceHarness, features: int, driver_ok: bool = True) -> None:
    """§3.1.1 from reset to DRIVER_OK on the rings ``h.start()`` laid out, loop not run."""
    vcpu_write(h, c.STATUS, 0)
    vcpu_write(h, c.STATUS, ACK)
    vcpu_write(h, c.STATUS, ACK | DRV)
    for sel in (0, 1):
        vcpu_write(h, c.DRIVER_FEATURES_SEL, sel)
        vcpu_write(h, c.DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFFFFFF)
    vcpu_write(h, c.STATUS, ACK | DRV | FOK)
    for index, mock in enumerate(h.queues):
        vcpu_write(h, c.QUEUE_SEL, index)
        vcpu_write(h, c.QUEUE_NUM, mock.size)
        for low, addr in ((c.QUEUE_DESC_LOW, mock.desc_table), (c.QUEUE_DRIVER_LOW,
                          mock.avail_ring), (c.QUEUE_DEVICE_LOW, mock.used_ring)):
            vcpu_write(h, low, addr & 0xFFFFFFFF)
            vcpu_write(h, low + 4, addr >> 32)
        vcpu_write(h, c.QUEUE_READY, 1)
    if driver_ok:
        vcpu_write(h, c.STATUS, ACK | DRV | FOK | DOK)


def test_reset_then_renegotiation_before_the_loop_ran_keeps_the_new_features() -> None:
    """Status=0 and a whole new negotiation on the vCPU before the device loop ran: the
    queued reset happens first and does not wipe the features the new driver accepted."""
    loop = EventLoop("mmio")
    h = DeviceHarness(EchoDevice(), loop=loop)
    h.start(features=1 << c.F_VERSION_1)
    wanted = (1 << c.F_VERSION_1) | (1 << 3)
    negotiate(h, wanted)
    loop.run_once(0)
    device = h.transport.device
    assert device.acked_features == wanted and device.active
    head = h.queues[0].add_chain([Buffer(h.alloc(8), 8)])
    h.kick(0)
    assert h.queues[0].used_elements() == [(head, 8)]


def test_reset_before_the_loop_activated_never_touches_the_old_rings() -> None:
    """DRIVER_OK then Status=0 before the device loop ran: the stale activation is dropped,
    so a chain the old driver had posted is never served (§2.4.1: after the reset the device
    must not interact with the queues)."""
    loop = EventLoop("mmio")
    h = DeviceHarness(EchoDevice(), loop=loop)
    h.start()
    negotiate(h, 1 << c.F_VERSION_1, driver_ok=False)
    h.queues[0].add_chain([Buffer(h.alloc(8), 8)])
    vcpu_write(h, c.STATUS, ACK | DRV | FOK | DOK)
    vcpu_write(h, c.STATUS, 0)
    loop.run_once(0)
    assert h.queues[0].used_idx() == 0
    assert not h.transport.device.active


def test_no_ring_access_after_the_reset_was_written() -> None:
    """A device half way through a long ring stops serving it once the driver wrote
    Status=0, even though the reset itself runs later on the device loop."""
    loop = EventLoop("mmio")
    h = DeviceHarness(EchoDevice(), queue_size=16, loop=loop)
    h.start()
    buf = h.alloc(8)
    for _ in range(16):
        h.queues[0].add_chain([Buffer(buf, 8)])
    vcpu_write(h, c.QUEUE_NOTIFY, 0)
    vcpu_write(h, c.STATUS, 0)
    for _ in range(4):
        loop.run_once(0)
    assert h.queues[0].used_idx() == 0


@contextmanager
def no_free_fds() -> Iterator[None]:
    """The process at its RLIMIT_NOFILE: every new fd fails with EMFILE until the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_driver_ok_without_file_descriptors_is_a_device_error() -> None:
    """Out of fds (e.g. a QMP client opened many images), DRIVER_OK cannot make its
    ioeventfds: the device gets DEVICE_NEEDS_RESET, the failure is counted, nothing
    raises to the vCPU; after fds are back a reset and a new negotiation work."""
    h = DeviceHarness(EchoDevice())
    h.start()
    negotiate(h, 1 << c.F_VERSION_1, driver_ok=False)
    h.run()
    with no_free_fds():
        vcpu_write(h, c.STATUS, ACK | DRV | FOK | DOK)
        h.run()
    status = h.read_reg(c.STATUS)
    assert status & c.STATUS_DEVICE_NEEDS_RESET, hex(status)
    assert h.read_reg(c.INTERRUPT_STATUS) & c.INT_CONFIG
    device = h.transport.device
    assert not device.active and device.counters["errors"] == 1
    assert h.start() == ACK | DRV | FOK | DOK
    head = h.queues[0].add_chain([Buffer(h.alloc(8), 8)])
    h.kick(0)
    assert h.queues[0].used_elements() == [(head, 8)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_register_storm_leaves_bounded_work_on_the_loop() -> None:
    """A driver cycling reset → DRIVER_OK 500 times and kicking, all before the device loop
    runs (it may be busy), leaves a few callbacks queued, not thousands, and no eventfd
    of the abandoned activations open; the last negotiation then works."""
    loop = EventLoop("mmio")
    h = DeviceHarness(EchoDevice(), loop=loop)
    h.start()
    loop.run_once(0)
    fds = open_fds()
    for _ in range(500):
        negotiate(h, 1 << c.F_VERSION_1)
        vcpu_write(h, c.QUEUE_NOTIFY, 0)
        vcpu_write(h, c.QUEUE_NOTIFY, 1)
    assert loop.pending_calls() <= 3, loop.pending_calls()
    assert open_fds() <= fds + 2, "eventfds of abandoned activations are still open"
    loop.run_once(0)
    head = h.queues[0].add_chain([Buffer(h.alloc(8), 8)])
    h.kick(0)
    assert h.queues[0].used_elements() == [(head, 8)]
    assert h.transport.device.resets >= 1
