"""Property: random descriptor tables and rings never raise out of the device path and
never touch memory outside guest RAM.

Guest RAM is the first RAM_SIZE bytes of a buffer followed by a canary the
devices must never reach.  Runs STRATOVMM_FUZZ_EXAMPLES examples per device
(short in CI; the long run's result is in bench/RESULTS.md).
"""

from __future__ import annotations

import atexit
import os
import struct
import tempfile
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratovmm.host.eventloop import EventLoop
from stratovmm.memory import GuestMemory
from stratovmm.testing.harness import CountingInterrupt
from stratovmm.virtio.device import VirtioDevice
from stratovmm.virtio.queue import QueueConfig, SplitQueue

RAM_SIZE = 64 * 1024
CANARY = b"\xa5" * 4096
QUEUE_SIZE = 8
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "300"))

addresses = st.one_of(
    st.integers(0, RAM_SIZE + 64),                       # in and just past RAM
    st.integers(RAM_SIZE - 64, RAM_SIZE + 64),           # the boundary
    st.integers(2**64 - 4096, 2**64 - 1),                # overflow bait
    st.sampled_from([0x4000, 0x6000, 0x8000, 0xA000]),   # plausible buffers
)
lengths = st.one_of(st.integers(0, 4096), st.sampled_from([1, 16, 17, 512, 2**32 - 1]))
descriptor = st.tuples(addresses, lengths, st.integers(0, 7), st.integers(0, 2 * QUEUE_SIZE))
scenario = st.fixed_dictionaries({
    "table": st.lists(descriptor, min_size=QUEUE_SIZE, max_size=QUEUE_SIZE),
    "indirect": st.lists(descriptor, min_size=0, max_size=12),
    "heads": st.lists(st.integers(0, 2 * QUEUE_SIZE), min_size=QUEUE_SIZE, max_size=QUEUE_SIZE),
    "avail_idx": st.one_of(st.integers(0, QUEUE_SIZE), st.integers(0, 0xFFFF)),
    "event_idx": st.booleans(),
    "payload": st.binary(min_size=16, max_size=64),
})


def _image() -> str:
    """A 32 KiB file of zeros, removed when the test process exits (every process that
    collects this module makes two: they were left in /tmp, two per test run)."""
    fd, path = tempfile.mkstemp(prefix="stratovmm-fuzz-", suffix=".img")
    os.write(fd, bytes(64 * 512))
    os.close(fd)
    atexit.register(os.unlink, path)
    return path


IMAGE = _image()
ENTROPY = _image()
LOOP = EventLoop("fuzz")     # one loop for every example: devices only arm timers on it


def make_blk() -> VirtioDevice:
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    return BlockDevice("fuzz-blk", BlockBackend(IMAGE), "FUZZ", LOOP)


def make_rng() -> VirtioDevice:
    from stratovmm_rng.device import RngDevice

    return RngDevice("fuzz-rng", ENTROPY, LOOP, 1000)


def run_scenario(factory: Callable[[], VirtioDevice], data: dict) -> None:  # type: ignore[type-arg]
    buffer = bytearray(RAM_SIZE) + bytearray(CANARY)
    memory = GuestMemory(buffer, [(0, RAM_SIZE)])
    for addr in (0x4000, 0x6000, 0x8000, 0xA000):
        memory.write(addr, data["payload"])
    for i, (addr, length, flags, nxt) in enumerate(data["table"]):
        memory.write(DESC + 16 * i, struct.pack("<QIHH", addr & (2**64 - 1), length & 0xFFFFFFFF,
                                                flags, nxt))
    for i, (addr, length, flags, nxt) in enumerate(data["indirect"]):
        memory.write(0x5000 + 16 * i, struct.pack("<QIHH", addr, length & 0xFFFFFFFF, flags, nxt))
    for i, head in enumerate(data["heads"]):
        memory.write_u16(AVAIL + 4 + 2 * i, head)
    memory.write_u16(AVAIL + 2, data["avail_idx"])
    config = QueueConfig(QUEUE_SIZE)
    config.desc_table, config.avail_ring, config.used_ring = DESC, AVAIL, USED
    device = factory()
    interrupt = CountingInterrupt()
    try:
        device.activate(memory, [SplitQueue.from_config(memory, config, data["event_idx"])],
                        interrupt, LOOP)
        device.process_queue(0)
        device.process_queue(0)
    finally:
        device.reset()          # cancels any rate-limit timer armed on the shared loop
        device.close()
    assert bytes(buffer[RAM_SIZE:]) == CANARY, "a device wrote outside guest RAM"
    used_idx = memory.read_u16(USED + 2)
    assert used_idx <= QUEUE_SIZE or interrupt.resets, "more completions than chains offered"


fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz
@given(scenario)
def test_blk_survives_random_rings(data: dict) -> None:  # type: ignore[type-arg]
    """virtio-blk: no exception escapes, nothing outside RAM is touched."""
    run_scenario(make_blk, data)


@fuzz
@given(scenario)
def test_rng_survives_random_rings(data: dict) -> None:  # type: ignore[type-arg]
    """virtio-rng: no exception escapes, nothing outside RAM is touched."""
    run_scenario(make_rng, data)
