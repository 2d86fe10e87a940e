"""virtio-balloon (virtio 1.2 §5.5) through the real virtio-mmio transport, no KVM."""

from __future__ import annotations

import struct

import pytest
from stratovmm_balloon.device import (
    DEFLATEQ,
    F_DEFLATE_ON_OOM,
    F_STATS_VQ,
    INFLATEQ,
    MAX_PFNS_PER_REQUEST,
    PAGE_SIZE,
    PFN_BUDGET,
    BalloonDevice,
    page_runs,
)

from stratovmm.api import EventLoop, Region
from stratovmm.testing import spec as c
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

RAM = 8 << 20                      # 2048 pages; the harness's rings live below 1 MiB
RAM_PAGES = RAM // PAGE_SIZE
HIGH = 1024                        # first page the tests balloon (4 MiB, far from the rings)


class Rig:
    """A started balloon with recorded discards and actual-change callbacks."""

    def __init__(self, deflate_on_oom: bool = False, start: bool = True,
                 queue_size: int = 16) -> None:
        self.loop = EventLoop("balloon-test")
        self.changes: list[int] = []
        self.device = BalloonDevice("balloon", RAM, self.loop, deflate_on_oom,
                                    self.changes.append)
        self.h = DeviceHarness(self.device, memory_size=RAM, queue_size=queue_size,
                               loop=self.loop)
        self.discards: list[tuple[int, int]] = []
        real_discard = self.h.memory.discard

        def record(gpa: int, length: int) -> None:
            self.discards.append((gpa, length))
            real_discard(gpa, length)

        self.h.memory.discard = record  # type: ignore[method-assign]
        if start:
            self.h.start()

    def send(self, queue: int, pfns: list[int], raw: bytes | None = None) -> None:
        """Post one request holding ``pfns`` (le32) on ``queue`` and kick it."""
        data = raw if raw is not None else struct.pack(f"<{len(pfns)}I", *pfns)
        addr = self.h.alloc(max(len(data), 1))
        self.h.memory.write(addr, data)
        self.h.queues[queue].add_chain([Buffer(addr, len(data))])
        self.h.kick(queue)

    def write_actual(self, pages: int, offset: int = 4) -> None:
        """The driver stores ``actual`` (a 32-bit config write, §5.5.6)."""
        self.h.transport.write(c.CONFIG + offset, struct.pack("<I", pages))

    def config(self) -> tuple[int, int]:
        """(num_pages, actual) as the driver reads them."""
        num_pages, actual = struct.unpack("<II", self.h.read_config(0, 8))
        return num_pages, actual


def test_deflate_on_oom_feature_follows_the_option() -> None:
    """VIRTIO_BALLOON_F_DEFLATE_ON_OOM is offered only with deflate-on-oom=on; STATS_VQ never."""
    on, off = Rig(True, start=False), Rig(False, start=False)
    assert on.h.device_features() & (1 << F_DEFLATE_ON_OOM)
    assert not off.h.device_features() & (1 << F_DEFLATE_ON_OOM)
    assert not on.h.device_features() & (1 << F_STATS_VQ)
    assert on.h.read_reg(c.DEVICE_ID) == 5
    assert on.h.start() & c.STATUS_DRIVER_OK


def test_inflate_discards_coalesced_runs() -> None:
    """Inflated PFNs are discarded as sorted runs of contiguous pages, one call per run."""
    rig = Rig()
    page = HIGH * PAGE_SIZE
    rig.h.memory.write(page, b"\xaa" * (4 * PAGE_SIZE))
    rig.send(INFLATEQ, [HIGH + 2, HIGH, HIGH + 1, HIGH + 10, HIGH + 1])
    assert sorted(rig.discards) == [(page, 3 * PAGE_SIZE), ((HIGH + 10) * PAGE_SIZE, PAGE_SIZE)]
    assert rig.h.memory.read(page, 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
    assert rig.h.memory.read(page + 3 * PAGE_SIZE, PAGE_SIZE) == b"\xaa" * PAGE_SIZE
    assert rig.h.queues[INFLATEQ].used_elements() == [(0, 0)]
    stats = rig.device.stats()
    assert stats["inflated_pages"] == 5 and stats["discarded_pages"] == 4
    assert stats["guest_faults"] == 0 and rig.h.interrupts == 1


def test_out_of_ram_pfns_are_dropped_and_counted() -> None:
    """PFNs outside guest RAM are dropped and counted; the good ones in the same request
    are still discarded and the queue keeps working."""
    rig = Rig()
    rig.send(INFLATEQ, [RAM_PAGES, HIGH, 0xFFFFFFFF, RAM_PAGES - 1])
    assert sorted(rig.discards) == [(HIGH * PAGE_SIZE, PAGE_SIZE),
                                    ((RAM_PAGES - 1) * PAGE_SIZE, PAGE_SIZE)]
    stats = rig.device.stats()
    assert stats["dropped_pages"] == 2 and stats["guest_faults"] == 2
    assert stats["inflated_pages"] == 2
    rig.send(INFLATEQ, [HIGH + 5])
    assert rig.discards[-1] == ((HIGH + 5) * PAGE_SIZE, PAGE_SIZE)
    assert len(rig.h.queues[INFLATEQ].used_elements()) == 2


def test_deflate_counts_without_touching_memory() -> None:
    """Deflate returns the chain and counts the pages; nothing is discarded or written."""
    rig = Rig()
    before = bytes(rig.h.memory.buffer[HIGH * PAGE_SIZE:])
    rig.send(DEFLATEQ, [HIGH, HIGH + 1, RAM_PAGES + 7])
    assert rig.discards == []
    assert bytes(rig.h.memory.buffer[HIGH * PAGE_SIZE:]) == before
    stats = rig.device.stats()
    assert stats["deflated_pages"] == 2 and stats["dropped_pages"] == 1
    assert rig.h.queues[DEFLATEQ].used_elements() == [(0, 0)]


def test_ragged_and_oversized_requests() -> None:
    """A length that is not a multiple of 4 is a fault (whole PFNs still used); more than
    MAX_PFNS_PER_REQUEST numbers are cut and the excess counted as dropped."""
    rig = Rig(queue_size=4)
    rig.send(INFLATEQ, [], raw=struct.pack("<I", HIGH) + b"\x01\x02")
    assert rig.discards == [(HIGH * PAGE_SIZE, PAGE_SIZE)]
    assert rig.device.stats()["guest_faults"] == 1
    count = MAX_PFNS_PER_REQUEST + 10
    rig.send(INFLATEQ, [HIGH + (i % 512) for i in range(count)])
    stats = rig.device.stats()
    assert stats["dropped_pages"] == 10
    assert stats["inflated_pages"] == 1 + MAX_PFNS_PER_REQUEST


def test_bad_chain_does_not_stop_the_queue() -> None:
    """A chain with a buffer outside RAM is completed with length 0 and counted; the next
    request is served."""
    rig = Rig()
    q = rig.h.queues[INFLATEQ]
    q.add_chain([Buffer(RAM + 4096, 8)])
    rig.h.kick(INFLATEQ)
    rig.send(INFLATEQ, [HIGH])
    assert rig.device.stats()["guest_faults"] >= 1
    assert rig.discards == [(HIGH * PAGE_SIZE, PAGE_SIZE)]
    assert len(q.used_elements()) == 2


def test_budget_yields_to_the_loop() -> None:
    """A ring holding far more than PFN_BUDGET page numbers is not served in one loop turn;
    the rest is served on the following turns without another kick."""
    rig = Rig(queue_size=16)
    per_request = MAX_PFNS_PER_REQUEST
    requests = 16
    assert requests * per_request >= 3 * PFN_BUDGET
    q = rig.h.queues[INFLATEQ]
    for _ in range(requests):
        data = struct.pack(f"<{per_request}I", *([HIGH] * per_request))
        addr = rig.h.alloc(len(data))
        rig.h.memory.write(addr, data)
        q.add_chain([Buffer(addr, len(data))])
    rig.h.kick(INFLATEQ)
    served = len(q.used_elements())
    assert PFN_BUDGET // per_request <= served < requests
    for _ in range(requests):
        rig.h.run()
    assert served + len(q.used_elements()) == requests
    assert rig.device.stats()["inflated_pages"] == requests * per_request


def test_actual_write_reports_the_change() -> None:
    """A driver write of actual is visible in config space and reported once per change."""
    rig = Rig()
    rig.write_actual(256)
    rig.write_actual(256)
    rig.write_actual(512)
    assert rig.changes == [256, 512]
    assert rig.config() == (0, 512) and rig.device.actual == 512


def test_num_pages_is_not_driver_writable() -> None:
    """A write to num_pages (or past the config) is a guest fault and changes nothing."""
    rig = Rig()
    rig.write_actual(99, offset=0)
    rig.h.transport.write(c.CONFIG + 6, b"\x01\x02\x03\x04")
    assert rig.config() == (0, 0) and rig.changes == []
    assert rig.device.stats()["guest_faults"] == 2


def test_actual_beyond_ram_is_clamped() -> None:
    """actual larger than guest RAM is a fault and is clamped to the RAM's page count."""
    rig = Rig()
    rig.write_actual(RAM_PAGES + 1)
    assert rig.device.actual == RAM_PAGES and rig.changes == [RAM_PAGES]
    assert rig.device.stats()["guest_faults"] == 1


def test_target_change_raises_config_interrupt() -> None:
    """request_target updates num_pages on the device loop and raises a config change."""
    rig = Rig()
    generation = rig.h.read_reg(c.CONFIG_GENERATION)
    before = rig.h.interrupts
    rig.device.request_target(1000)
    assert rig.config()[0] == 0            # not applied until the device loop runs
    rig.h.run()
    assert rig.config()[0] == 1000
    assert rig.h.interrupts == before + 1
    assert rig.h.read_reg(c.INTERRUPT_STATUS) & c.INT_CONFIG
    assert rig.h.read_reg(c.CONFIG_GENERATION) == generation + 1


def test_target_before_driver_is_read_at_probe() -> None:
    """A target set before the driver starts raises no interrupt; the driver reads it."""
    rig = Rig(start=False)
    rig.device.request_target(64)
    rig.h.run()
    assert rig.h.interrupts == 0
    rig.h.start()
    assert rig.config()[0] == 64


def test_target_outside_ram_is_refused() -> None:
    """A target above the RAM's page count (or negative) is a programming error."""
    rig = Rig()
    with pytest.raises(ValueError):
        rig.device.request_target(RAM_PAGES + 1)
    with pytest.raises(ValueError):
        rig.device.request_target(-1)


def test_reset_empties_the_balloon() -> None:
    """A device reset makes actual 0 (reported) and keeps the target."""
    rig = Rig()
    rig.device.request_target(300)
    rig.h.run()
    rig.write_actual(300)
    rig.h.write_reg(c.STATUS, 0)
    assert rig.changes == [300, 0]
    assert rig.config() == (300, 0)


def test_page_runs_split_at_region_ends() -> None:
    """Runs never cross from one RAM region into a region that starts right after it."""
    regions = [Region(0, 4 * PAGE_SIZE, 0), Region(4 * PAGE_SIZE, 4 * PAGE_SIZE, 1 << 30)]
    assert list(page_runs([1, 2, 3, 4, 5, 7], regions)) == [(1, 3), (4, 2), (7, 1)]
    assert list(page_runs([], regions)) == []
    assert list(page_runs([9], [])) == [(9, 1)]


def test_repeated_kicks_keep_one_pending_retry() -> None:
    """Kicks that each use up the per-turn budget while requests remain leave one retry
    pending, not one per kick: the next loop turn serves the queue once."""
    rig = Rig(queue_size=128)
    data = struct.pack(f"<{MAX_PFNS_PER_REQUEST}I", *([HIGH] * MAX_PFNS_PER_REQUEST))
    addr = rig.h.alloc(len(data))
    rig.h.memory.write(addr, data)
    q = rig.h.queues[INFLATEQ]
    for _ in range(128):
        q.add_chain([Buffer(addr, len(data))])
    for _ in range(10):
        rig.device.process_queue(INFLATEQ)        # ten kicks before the loop runs
    calls: list[int] = []
    serve = rig.device.process_queue

    def counted(index: int) -> None:
        calls.append(index)
        serve(index)

    rig.device.process_queue = counted  # type: ignore[method-assign]
    rig.loop.run_once(0)
    assert calls == [INFLATEQ]


def test_target_requests_are_coalesced_on_the_loop() -> None:
    """1,000 targets asked before the loop runs queue one callback; the last one wins and
    the driver gets one config interrupt."""
    rig = Rig()
    before = rig.h.interrupts
    for pages in range(1000):
        rig.device.request_target(pages)
    assert rig.loop.pending_calls() == 1
    rig.loop.run_once(0)
    assert rig.config()[0] == 999
    assert rig.h.interrupts == before + 1
