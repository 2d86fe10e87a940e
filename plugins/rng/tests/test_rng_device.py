"""virtio-rng (virtio 1.2 §5.4) through the real transport, no KVM."""

from __future__ import annotations

from pathlib import Path

from stratovmm_rng.device import MAX_REQUEST, RngDevice

from stratovmm.api import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer


def harness(path: Path, rate: int | None = None) -> DeviceHarness:
    loop = EventLoop("rng-test")
    h = DeviceHarness(RngDevice("rng", str(path), loop, rate), memory_size=8 << 20, loop=loop)
    h.start()
    return h


def source(tmp_path: Path, n: int = 4096) -> tuple[Path, bytes]:
    data = bytes((i * 7 + 3) % 256 for i in range(n))
    path = tmp_path / "entropy.bin"
    path.write_bytes(data)
    return path, data


def test_buffers_are_filled_from_the_file_in_order(tmp_path: Path) -> None:
    """Each request's writable buffers receive the next bytes of random_file."""
    path, data = source(tmp_path)
    h = harness(path)
    q = h.queues[0]
    a, b = h.alloc(100), h.alloc(50)
    q.add_chain([Buffer(a, 100, True), Buffer(b, 50, True)])
    h.kick(0)
    assert q.used_elements()[0][1] == 150
    assert h.memory.read(a, 100) + h.memory.read(b, 50) == data[:150]


def test_regular_file_wraps_around(tmp_path: Path) -> None:
    """A regular file is read in a loop, so a small file still feeds large requests."""
    path, data = source(tmp_path, 64)
    h = harness(path)
    q = h.queues[0]
    a = h.alloc(200)
    q.add_chain([Buffer(a, 200, True)])
    h.kick(0)
    assert h.memory.read(a, 200) == (data * 4)[:200]


def test_request_size_is_capped(tmp_path: Path) -> None:
    """A huge request gets at most MAX_REQUEST bytes: host allocation per request is capped."""
    path, _ = source(tmp_path)
    h = harness(path)
    q = h.queues[0]
    q.add_chain([Buffer(h.alloc(MAX_REQUEST * 2), MAX_REQUEST * 2, True)])
    h.kick(0)
    assert q.used_elements()[0][1] == MAX_REQUEST


def test_rate_limit_grants_at_most_the_bucket(tmp_path: Path) -> None:
    """bytes_per_sec=64: a 1000-byte request gets 64 bytes now, the next waits for a timer."""
    path, _ = source(tmp_path)
    h = harness(path, rate=64)
    q = h.queues[0]
    q.add_chain([Buffer(h.alloc(1000), 1000, True)])
    q.add_chain([Buffer(h.alloc(1000), 1000, True)])
    h.kick(0)
    used = q.used_elements()
    assert [length for _h, length in used] == [64]
    assert h.loop.pending_timers()
