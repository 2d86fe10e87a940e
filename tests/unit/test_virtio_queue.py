"""The split virtqueue, device side (virtio 1.2 §2.7), against a driver-side mock."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratovmm.testing.memory import BytearrayGuestMemory
from stratovmm.testing.virtqueue import Buffer, MockSplitQueue
from stratovmm.virtio.constants import AVAIL_F_NO_INTERRUPT, DESC_F_NEXT, USED_F_NO_NOTIFY
from stratovmm.virtio.queue import QueueConfig, QueueProtocolError

SIZE = 4


def make(event_idx: bool = False) -> MockSplitQueue:
    return MockSplitQueue(BytearrayGuestMemory(1 << 20), 0x1000, SIZE, event_idx)


def test_empty_ring_pops_nothing() -> None:
    """With avail->idx unchanged, pop returns None."""
    q = make()
    assert q.device_queue().pop() is None


def test_chains_pop_in_order_and_complete_into_the_used_ring() -> None:
    """Chains come out in avail order; add_used publishes (head, len) and used->idx."""
    q = make()
    heads = [q.add_chain([Buffer(0x8000 + i * 0x100, 8, True)]) for i in range(3)]
    dq = q.device_queue()
    popped = [dq.pop() for _ in range(3)]
    assert [c.head for c in popped if c] == heads
    for chain in popped:
        assert chain is not None
        dq.add_used(chain.head, 8)
    assert q.used_elements() == [(h, 8) for h in heads]
    assert dq.pop() is None


def test_bad_chain_is_completed_with_zero_and_skipped() -> None:
    """A bad chain is returned with length 0, counted, and the next good one is served."""
    q = make()
    q.write_descriptor(0, 1 << 30, 16, 0)      # outside RAM
    q.publish(0)
    q.skip_descriptors(1)
    good = q.add_chain([Buffer(0x8000, 8)])
    dq = q.device_queue()
    chain = dq.pop()
    assert chain is not None and chain.head == good
    assert dq.bad_chains == 1
    assert q.used_elements() == [(0, 0)]


def test_avail_index_jumping_past_the_queue_size_breaks_the_ring() -> None:
    """§2.7.13.3: more new entries than the queue holds means the driver is broken."""
    q = make()
    q.memory.write_u16(q.avail_ring + 2, SIZE + 1)
    with pytest.raises(QueueProtocolError):
        q.device_queue().pop()


def test_head_index_out_of_range_breaks_the_ring() -> None:
    """A head that is not a descriptor index cannot even be completed: reset needed."""
    q = make()
    q.publish(SIZE + 3)
    with pytest.raises(QueueProtocolError):
        q.device_queue().pop()


def test_ring_indices_wrap_at_16_bits() -> None:
    """Tens of thousands of requests through a 4-entry queue keep working across u16 wrap."""
    q = make()
    dq = q.device_queue()
    for i in range(70000):
        head = q.add_chain([Buffer(0x8000, 4, True)])
        chain = dq.pop()
        assert chain is not None and chain.head == head
        dq.add_used(chain.head, i & 0xFF)
        assert q.used_elements() == [(head, i & 0xFF)]


def test_interrupt_suppression_without_event_idx() -> None:
    """§2.7.10: VIRTQ_AVAIL_F_NO_INTERRUPT turns used-buffer interrupts off."""
    q = make()
    dq = q.device_queue()
    dq.add_used(0, 0)
    assert dq.needs_interrupt()
    q.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    dq.add_used(0, 0)
    assert not dq.needs_interrupt()


def test_event_idx_interrupts_only_when_used_event_is_crossed() -> None:
    """With EVENT_IDX, interrupt only when used->idx passes used_event (vring_need_event)."""
    q = make(event_idx=True)
    dq = q.device_queue()
    q.set_used_event(2)
    dq.add_used(0, 0)
    assert dq.needs_interrupt()           # first notification is always sent
    dq.add_used(0, 0)
    assert not dq.needs_interrupt()       # used idx 2: event 2 not yet crossed
    dq.add_used(0, 0)
    assert dq.needs_interrupt()           # used idx 3 crossed used_event 2
    dq.add_used(0, 0)
    assert not dq.needs_interrupt()


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 8)), min_size=1,
                      max_size=20), start=st.integers(0, 0xFFFF))
def test_event_idx_decision_in_c_matches_python(steps: list[tuple[int, int]],
                                                 start: int) -> None:
    """The C path's vring_need_event (svmm_need_event) answers as the Python one does, for
    any used_event the driver writes and any run of completions, across the 16-bit wrap."""
    answers = []
    for fast in (True, False):
        q = make(event_idx=True)
        dq = dataclasses.replace(q.device_queue(), fastpath=fast, next_used=start)
        assert dq.has_c_path == fast
        seen = []
        for used_event, completions in steps:
            q.set_used_event(used_event)
            for _ in range(completions):
                dq.add_used(0, 0)
            seen.append(dq.needs_interrupt())
        answers.append(seen)
    assert answers[0] == answers[1]


def test_notification_control_writes_avail_event_or_flag() -> None:
    """Enabling kicks writes avail_event (EVENT_IDX) or clears NO_NOTIFY; reports pending work."""
    q = make(event_idx=True)
    dq = q.device_queue()
    q.add_chain([Buffer(0x8000, 4)])
    assert dq.set_notification(True) is True         # work is already there
    assert dq.pop() is not None
    assert dq.set_notification(True) is False
    assert q.avail_event() == 1
    plain = make()
    pq = plain.device_queue()
    pq.set_notification(False)
    assert plain.used_flags() == USED_F_NO_NOTIFY
    pq.set_notification(True)
    assert plain.used_flags() == 0


@pytest.mark.parametrize("size,desc,avail,used,reason", [
    (3, 0x1000, 0x2000, 0x3000, "power of 2"),
    (8, 0x1008, 0x2000, 0x3000, "aligned"),
    (8, 0x1000, 0x2001, 0x3000, "aligned"),
    (8, 0x1000, 0x2000, 0x3002, "aligned"),
    (8, 0x1000, 0x2000, (1 << 20) - 8, "outside guest RAM"),
    (32, 0x1000, 0x2000, 0x3000, "power of 2"),
])
def test_queue_config_checks(size: int, desc: int, avail: int, used: int, reason: str) -> None:
    """Ring addresses are checked for size, alignment and RAM when the queue is made ready."""
    cfg = QueueConfig(16)
    cfg.size, cfg.desc_table, cfg.avail_ring, cfg.used_ring = size, desc, avail, used
    problem = cfg.check(BytearrayGuestMemory(1 << 20))
    assert problem is not None and reason in problem


def test_chain_spanning_descriptors_with_next_uses_the_table() -> None:
    """NEXT links are followed through arbitrary table order."""
    q = make()
    q.write_descriptor(2, 0x8000, 4, DESC_F_NEXT, 0)
    q.write_descriptor(0, 0x9000, 4, 0)
    q.publish(2)
    chain = q.device_queue().pop()
    assert chain is not None and [d.addr for d in chain.readable] == [0x8000, 0x9000]


def test_unpop_gives_the_chain_back_for_the_next_pop() -> None:
    """unpop after a pop (past a bad chain, across the 16-bit wrap): the same chain comes
    out again, walked afresh; the bad one is not completed twice."""
    q = make()
    q.start_at(0xFFFF)
    dq = q.device_queue()
    dq.last_avail = dq.next_used = 0xFFFF
    q.write_descriptor(2, 1 << 30, 8, 0)                 # outside RAM: a bad chain
    q.publish(2)
    good = q.add_chain([Buffer(0x8000, 8, True)])
    chain = dq.pop()
    assert chain is not None and chain.head == good and dq.last_avail == 1
    dq.unpop()
    assert dq.last_avail == 0
    again = dq.pop()
    assert again == chain and dq.pop() is None
    assert q.used_elements() == [(2, 0)] and dq.bad_chains == 1


class WriteLog(BytearrayGuestMemory):
    """Guest RAM that records the address of every store, in order (``GuestMemory``'s
    u16/u32/u64 stores copy their packed bytes in through ``write``)."""

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.stores: list[int] = []

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.stores.append(gpa)
        super().write(gpa, data)


def test_a_batch_of_used_elements_is_published_with_one_idx_store_after_them() -> None:
    """§2.7.8.2: add_used_batch writes every element, then used->idx once, so the driver
    never sees part of a batch (the buffers of one merged frame arrive together)."""
    memory = WriteLog()
    q = MockSplitQueue(memory, 0x1000, SIZE)
    dq = q.device_queue()
    memory.stores.clear()
    dq.add_used_batch([(3, 10), (1, 20), (2, 30)])
    idx_addr = q.used_ring + 2
    assert memory.stores.count(idx_addr) == 1 and memory.stores[-1] == idx_addr
    assert q.used_elements() == [(3, 10), (1, 20), (2, 30)] and dq.completed == 3
    memory.stores.clear()
    dq.add_used_batch([])
    assert memory.stores == [] and q.used_idx() == 3
