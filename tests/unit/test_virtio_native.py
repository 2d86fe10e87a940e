"""The C ring path (``stratovmm.virtio.native``) against the pure-Python one on hostile rings:
the same inputs give the same chains, the same refusals, the same guest-visible memory
(used ring included) and the same error accounting, and C never touches memory outside
guest RAM.

Guest RAM is two regions with a hole between them, laid over one buffer that goes on past
RAM with a canary; descriptor tables, indirect tables, heads and avail indices are drawn
at random, near region edges, and as 64-bit overflow bait.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratovmm.errors import GuestError
from stratovmm.fastpath import FASTPATH_ENV, fastpath_enabled
from stratovmm.memory import GuestMemory
from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.virtio.chain import ChainError, DescriptorChain, walk_chain
from stratovmm.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from stratovmm.virtio.native import Deferred, NativeRing
from stratovmm.virtio.queue import SplitQueue

LOW, HIGH = 0x8000, 0x4000                  # region 0 at 0, region 1 at HOLE
HOLE = 0x10000
REGIONS = ((0, LOW), (HOLE, HIGH))
CANARY = b"\xa5" * 4096
SIZE = 8
DESC, AVAIL, USED = 0x1000, 0x1200, 0x1400
INDIRECT = 0x2000                            # where indirect tables are put
EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "0")) or 300
DESC_FMT = struct.Struct("<QIHH")

edges = [0, LOW, HOLE, HOLE + HIGH]
addresses = st.one_of(
    st.integers(0x3000, LOW - 1),                                     # plausible buffers
    st.integers(HOLE, HOLE + HIGH - 1),
    st.sampled_from(edges).flatmap(lambda e: st.integers(max(e - 32, 0), e + 32)),
    st.integers(2**64 - 4096, 2**64 - 1),                             # overflow bait
    st.just(INDIRECT),
)
lengths = st.one_of(st.integers(0, 64), st.sampled_from([16, 32, 128, 512, 2**31, 2**32 - 1]))
# buffers that end exactly at a region's end, one byte short of it, or one byte past it
edge_buffers = st.tuples(st.sampled_from(edges), st.integers(0, 64), st.integers(-1, 1)).map(
    lambda t: (max(t[0] - t[1], 0), max(t[1] + t[2], 0)))
buffers = st.one_of(st.tuples(addresses, lengths), edge_buffers)
flags = st.one_of(st.sampled_from([0, DESC_F_NEXT, DESC_F_WRITE, DESC_F_NEXT | DESC_F_WRITE,
                                   DESC_F_INDIRECT]), st.integers(0, 7))
nexts = st.one_of(st.integers(0, SIZE - 1), st.integers(0, 2 * SIZE))
descriptor = st.tuples(buffers, flags, nexts).map(lambda t: (*t[0], t[1], t[2]))
rings = st.fixed_dictionaries({
    "table": st.lists(descriptor, min_size=SIZE, max_size=SIZE),
    "indirect": st.lists(descriptor, min_size=0, max_size=2 * SIZE),
    "heads": st.lists(st.integers(0, SIZE - 1) | st.integers(SIZE, 2 * SIZE), min_size=SIZE,
                      max_size=SIZE),
    "start": st.integers(0, 0xFFFF),
    "pending": st.integers(1, SIZE) | st.integers(0, 0xFFFF),
    "lengths": st.lists(st.integers(0, 2**32 - 1), min_size=SIZE, max_size=SIZE),
})
native_settings = settings(max_examples=EXAMPLES, deadline=None,
                           suppress_health_check=list(HealthCheck))


class CanaryMemory(GuestMemory):
    """``REGIONS`` of guest RAM over a buffer that continues past RAM with ``CANARY``."""

    def __init__(self) -> None:
        ram = sum(size for _gpa, size in REGIONS)
        self.buffer = bytearray(ram) + bytearray(CANARY)
        self.ram = ram
        super().__init__(self.buffer, REGIONS)


def lay_out(memory: GuestMemory, ring: dict[str, Any]) -> None:
    """Write the drawn descriptor table, indirect table, avail ring and indices."""
    for index, desc in enumerate(ring["table"]):
        memory.write(DESC + 16 * index, DESC_FMT.pack(*desc))
    for index, desc in enumerate(ring["indirect"]):
        memory.write(INDIRECT + 16 * index, DESC_FMT.pack(*desc))
    start = ring["start"]
    for slot, head in enumerate(ring["heads"]):
        memory.write_u16(AVAIL + 4 + 2 * slot, head)
    memory.write_u16(AVAIL + 2, (start + ring["pending"]) & 0xFFFF)
    memory.write_u16(USED + 2, start)


def queue(memory: GuestMemory, start: int, fastpath: bool) -> SplitQueue:
    q = SplitQueue(memory, SIZE, DESC, AVAIL, USED, fastpath=fastpath)
    q.last_avail = q.next_used = start
    return q


def outcome(q: SplitQueue) -> Any:
    """What one ``pop`` did: the chain, None, or the exception's kind and text."""
    try:
        return q.pop()
    except GuestError as exc:
        return (type(exc).__name__, str(exc))


def drain(memory: GuestMemory, ring: dict[str, Any], fastpath: bool) -> list[Any]:
    """Pop until empty or a broken ring, completing each chain with a drawn length; what
    every step did, and the queue's accounting."""
    q = queue(memory, ring["start"], fastpath)
    assert (q._native is not None) == fastpath
    steps: list[Any] = []
    for length in ring["lengths"] + ring["lengths"]:
        got = outcome(q)
        steps.append(got)
        if not isinstance(got, DescriptorChain):
            break
        q.add_used_batch([(got.head, length)])
    return [steps, q.last_avail, q.next_used, q.bad_chains, q.completed, q.errors]


@native_settings
@given(rings)
def test_both_paths_pop_and_complete_alike(ring: dict[str, Any]) -> None:
    """Random and hostile rings, popped and completed to the end by each path: the same
    chains, refusals (counted and worded alike), used ring and guest memory; no byte outside
    guest RAM changes."""
    slow, fast = CanaryMemory(), CanaryMemory()
    lay_out(slow, ring)
    lay_out(fast, ring)
    assert drain(slow, ring, False) == drain(fast, ring, True)
    assert fast.buffer == slow.buffer
    assert fast.buffer[fast.ram :] == CANARY


@native_settings
@given(rings)
def test_c_accepts_exactly_the_chains_python_accepts(ring: dict[str, Any]) -> None:
    """C itself (not the Python fallback it defers to) takes a chain only when the
    Python walk accepts it, with the same buffers, and defers on every refusal (§2.7.5)."""
    memory = CanaryMemory()
    lay_out(memory, ring)
    native = NativeRing.over(memory, SIZE)
    assert native is not None
    start = ring["start"]
    got = native.pop(DESC, AVAIL, SIZE, start)
    pending = ring["pending"]
    if pending == 0:
        assert got is None
        return
    head = ring["heads"][start % SIZE]
    expected: Any
    if pending > SIZE or head >= SIZE:
        expected = "deferred"
    else:
        try:
            expected = walk_chain(memory, DESC, SIZE, head)
        except ChainError:
            expected = "deferred"
    assert ("deferred" if isinstance(got, Deferred) else got) == expected


def test_c_refuses_a_ring_outside_guest_ram() -> None:
    """A ring or used ring that lies in the hole is left to Python, which raises as ever;
    C writes nothing there."""
    memory = CanaryMemory()
    native = NativeRing.over(memory, SIZE)
    assert native is not None
    assert isinstance(native.pop(DESC, LOW - 2, SIZE, 0), Deferred)
    assert native.push_used(LOW - 8, SIZE, 0, [(1, 2)]) is None
    before = bytes(memory.buffer)
    q = SplitQueue(memory, SIZE, DESC, AVAIL, LOW - 8)
    with pytest.raises(GuestError):
        q.add_used_batch([(1, 2)])
    assert memory.buffer[memory.ram :] == before[memory.ram :]


def test_a_memory_subclass_with_its_own_accessors_is_served_in_python() -> None:
    """C never goes around a GuestMemory subclass that reaches RAM its own way."""

    class Logged(BytearrayGuestMemory):
        def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
            super().write(gpa, data)

    assert NativeRing.over(Logged(1 << 16), SIZE) is None
    assert NativeRing.over(BytearrayGuestMemory(1 << 16), SIZE) is not None


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """STRATOVMM_FASTPATH=0 serves queues in pure Python; unset, the C path (the default)."""
    memory = BytearrayGuestMemory(1 << 16)
    monkeypatch.delenv(FASTPATH_ENV, raising=False)
    assert fastpath_enabled() and SplitQueue(memory, SIZE, DESC, AVAIL, USED)._native
    monkeypatch.setenv(FASTPATH_ENV, "0")
    assert not fastpath_enabled()
    assert SplitQueue(memory, SIZE, DESC, AVAIL, USED)._native is None
