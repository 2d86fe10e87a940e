"""Descriptor chain walking against hostile tables (virtio 1.2 §2.7.5)."""

from __future__ import annotations

import pytest

from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.testing.virtqueue import Buffer, MockSplitQueue
from stratovmm.virtio.chain import (
    ChainError,
    DescriptorChain,
    gather,
    scatter,
    skip_views,
    trim_views,
    walk_chain,
)
from stratovmm.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

SIZE = 8


@pytest.fixture
def q() -> MockSplitQueue:
    """A driver queue of 8 entries in 1 MiB of guest RAM."""
    return MockSplitQueue(BytearrayGuestMemory(1 << 20), 0x1000, SIZE)


def walk(q: MockSplitQueue, head: int = 0) -> DescriptorChain:
    return walk_chain(q.memory, q.desc_table, q.size, head)


def test_readable_then_writable_chain_is_split_in_order(q: MockSplitQueue) -> None:
    """A well-formed chain yields its readable buffers, then its writable ones."""
    head = q.add_chain([Buffer(0x8000, 16), Buffer(0x9000, 512, True), Buffer(0xA000, 1, True)])
    chain = walk(q, head)
    assert [(d.addr, d.length) for d in chain.readable] == [(0x8000, 16)]
    assert [(d.addr, d.length) for d in chain.writable] == [(0x9000, 512), (0xA000, 1)]
    assert chain.readable_len == 16 and chain.writable_len == 513


def test_next_index_out_of_range_is_refused(q: MockSplitQueue) -> None:
    """A NEXT pointing past the table is a bad chain."""
    q.write_descriptor(0, 0x8000, 16, DESC_F_NEXT, SIZE)
    with pytest.raises(ChainError, match="index"):
        walk(q)


def test_descriptor_loop_is_refused(q: MockSplitQueue) -> None:
    """0 → 1 → 0 never ends: the walk stops at the queue size."""
    q.write_descriptor(0, 0x8000, 16, DESC_F_NEXT, 1)
    q.write_descriptor(1, 0x8000, 16, DESC_F_NEXT, 0)
    with pytest.raises(ChainError, match="longer than the queue size"):
        walk(q)


@pytest.mark.parametrize("addr,length", [(1 << 20, 1), ((1 << 20) - 8, 16),
                                         ((1 << 64) - 8, 16), (0, (1 << 32) - 1)])
def test_buffer_outside_guest_ram_is_refused(q: MockSplitQueue, addr: int, length: int) -> None:
    """Buffers past the end of RAM, or whose end overflows 64 bits, are refused."""
    q.write_descriptor(0, addr, length, 0)
    with pytest.raises(ChainError, match="outside guest RAM"):
        walk(q)


def test_readable_after_writable_is_refused(q: MockSplitQueue) -> None:
    """§2.7.4.2: device-readable descriptors come before device-writable ones."""
    q.write_descriptor(0, 0x8000, 16, DESC_F_WRITE | DESC_F_NEXT, 1)
    q.write_descriptor(1, 0x9000, 16, 0)
    with pytest.raises(ChainError, match="readable descriptor after a writable"):
        walk(q)


def test_indirect_table_is_followed(q: MockSplitQueue) -> None:
    """An INDIRECT descriptor's table is walked like a chain."""
    head = q.add_indirect_chain(0x20000, [Buffer(0x8000, 16), Buffer(0x9000, 64, True)])
    chain = walk(q, head)
    assert [d.addr for d in chain.readable] == [0x8000]
    assert [d.addr for d in chain.writable] == [0x9000]


@pytest.mark.parametrize("length", [0, 24, 16 * (SIZE + 1)])
def test_indirect_table_length_must_be_16n_within_queue_size(q: MockSplitQueue,
                                                            length: int) -> None:
    """§2.7.5.3.1: the table length is a non-zero multiple of 16, at most queue-size entries."""
    q.write_descriptor(0, 0x20000, length, DESC_F_INDIRECT)
    with pytest.raises(ChainError, match="indirect table length"):
        walk(q)


def test_indirect_with_next_is_refused(q: MockSplitQueue) -> None:
    """§2.7.5.3.1: INDIRECT and NEXT together are forbidden."""
    q.write_descriptor(0, 0x20000, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    with pytest.raises(ChainError, match="NEXT"):
        walk(q)


def test_nested_indirect_is_refused(q: MockSplitQueue) -> None:
    """§2.7.5.3.1: an indirect table may not contain an INDIRECT descriptor."""
    q.write_descriptor(0, 0x21000, 16, DESC_F_INDIRECT, table=0x20000)
    q.write_descriptor(0, 0x20000, 16, DESC_F_INDIRECT)
    with pytest.raises(ChainError, match="inside an indirect table"):
        walk(q)


def test_indirect_table_outside_ram_is_refused(q: MockSplitQueue) -> None:
    """The indirect table itself must lie in guest RAM."""
    q.write_descriptor(0, (1 << 20) - 16, 32, DESC_F_INDIRECT)
    with pytest.raises(ChainError, match="outside guest RAM"):
        walk(q)


def test_total_length_must_fit_32_bits() -> None:
    """The used ring's len is 32 bits: a chain totalling 2^32 bytes or more is refused."""
    ram = (1 << 31) + (1 << 20)

    class SparseMemory(BytearrayGuestMemory):
        """Claims 2 GiB of RAM but stores only the first MiB (descriptors live there)."""

        def contains(self, gpa: int, length: int) -> bool:
            return gpa >= 0 and gpa + length <= ram

    memory = SparseMemory(1 << 20)
    q = MockSplitQueue(memory, 0x1000, SIZE)
    q.write_descriptor(0, 0x100000, 1 << 31, DESC_F_NEXT, 1)
    q.write_descriptor(1, 0x100000, 1 << 31, 0)
    with pytest.raises(ChainError, match="2\\^32"):
        walk(q)


@pytest.mark.parametrize("addr", [1 << 20 | 0x1000, (1 << 64) - 1, 0xD000_0000])
def test_empty_buffer_outside_guest_ram_is_refused(q: MockSplitQueue, addr: int) -> None:
    """§2.7.5: ``addr`` is a guest-physical address, so even a zero-length buffer must name
    guest RAM; otherwise the device's first access would fail after the chain left the ring."""
    q.write_descriptor(0, 0x8000, 16, DESC_F_NEXT, 1)
    q.write_descriptor(1, addr, 0, DESC_F_WRITE)
    with pytest.raises(ChainError, match="outside guest RAM"):
        walk(q)


def test_empty_buffer_inside_guest_ram_is_accepted(q: MockSplitQueue) -> None:
    """A zero-length buffer in RAM (or at its very end) is legal and kept in the chain."""
    q.write_descriptor(0, 0x8000, 0, DESC_F_NEXT, 1)
    q.write_descriptor(1, 1 << 20, 0, DESC_F_WRITE)
    chain = walk_chain(q.memory, q.desc_table, q.size, 0)
    assert [d.length for d in chain.readable + chain.writable] == [0, 0]


def test_skip_and_trim_views_cut_across_buffers() -> None:
    """skip_views drops a prefix and trim_views keeps one, across buffer boundaries; empty
    views never reach an iovec."""
    views = [memoryview(b"abc"), memoryview(b""), memoryview(b"defg")]
    assert [bytes(v) for v in skip_views(views, 2)] == [b"c", b"defg"]
    assert [bytes(v) for v in skip_views(views, 3)] == [b"defg"]
    assert skip_views(views, 7) == [] and skip_views(views, 99) == []
    assert [bytes(v) for v in trim_views(views, 5)] == [b"abc", b"de"]
    assert [bytes(v) for v in trim_views(views, 3)] == [b"abc"]
    assert trim_views(views, 0) == []
    assert [bytes(v) for v in trim_views(skip_views(views, 1), 4)] == [b"bc", b"de"]


def test_write_all_scatters_from_an_offset_over_empty_buffers(q: MockSplitQueue) -> None:
    """write_all(offset=n) starts n bytes into the writable buffers (a status byte, a header
    field), skipping empty ones; it returns how many bytes fit."""
    memory = q.memory
    head = q.add_chain([Buffer(0x8000, 16), Buffer(0x9000, 4, True), Buffer(0x9100, 0, True),
                        Buffer(0x9200, 4, True)])
    chain = walk(q, head)
    assert chain.write_all(memory, b"XYZ", offset=3) == 3
    assert memory.read(0x9003, 1) == b"X" and memory.read(0x9200, 2) == b"YZ"
    assert chain.write_all(memory, b"!", offset=chain.writable_len - 1) == 1
    assert memory.read(0x9203, 1) == b"!"
    assert chain.write_all(memory, b"late", offset=8) == 0
    assert memory.read(0x8000, 16) == bytes(16)         # readable buffers are never written


def test_trim_writable_offers_fewer_bytes_under_the_same_head(q: MockSplitQueue) -> None:
    """trim_writable(n) keeps the readable part and the first n writable bytes; a chain that
    already fits is returned as it is."""
    head = q.add_chain([Buffer(0x8000, 2), Buffer(0x9000, 8, True), Buffer(0xA000, 8, True)])
    chain = walk(q, head)
    trimmed = chain.trim_writable(10)
    assert trimmed.head == head and trimmed.readable == chain.readable
    assert [(d.addr, d.length) for d in trimmed.writable] == [(0x9000, 8), (0xA000, 2)]
    assert chain.trim_writable(16) is chain
    assert chain.trim_writable(0).writable == ()


def test_scatter_and_gather_copy_across_buffers_from_an_offset() -> None:
    """scatter copies host bytes into views from a byte offset, gather copies them out;
    both stop at the end of the views and say how much they copied."""
    first, second = bytearray(3), bytearray(4)
    views = [memoryview(first), memoryview(b"")[:0], memoryview(second)]
    assert scatter(views, b"wxyz", offset=2) == 4
    assert first == b"\0\0w" and second == b"xyz\0"
    assert scatter(views, b"long tail", offset=5) == 2 and second == b"xylo"
    out = bytearray(5)
    assert gather(views, memoryview(out), offset=1) == 5 and out == b"\0wxyl"
    assert gather(views, memoryview(bytearray(9)), offset=6) == 1
