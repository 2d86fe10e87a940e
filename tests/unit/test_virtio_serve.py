"""The core's serving loop (``VirtioDevice.serve``) beyond budgets: chains a handler keeps are
held and offered first next time, a reset forgets them, and the ``Frames`` form gathers
several chains per item, refuses the ones its check names, and completes each item's chains
together."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stratovmm.fastpath import FASTPATH_ENV
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.device import Frames, HeldChains, VirtioDevice


class WaitingDevice(VirtioDevice):
    """One receive queue filled from ``self.data`` (one byte per chain); None while empty."""

    DEVICE_TYPE = 42
    QUEUE_SIZES = (16,)

    def __init__(self) -> None:
        super().__init__("waiting")
        self.data = b""
        self.offered: list[int] = []

    def handle_queue(self, index: int) -> None:
        self.serve(index, self._fill)

    def _fill(self, chain: DescriptorChain) -> int | None:
        assert self.memory is not None
        self.offered.append(chain.head)
        if not self.data:
            return None
        byte, self.data = self.data[:1], self.data[1:]
        return chain.write_all(self.memory, byte)


def test_a_chain_the_handler_keeps_is_held_and_offered_first_next_time() -> None:
    """No data: the chain is held (not used, not lost) and serving stops; when data comes the
    same chain is offered first, then the rest; a reset forgets what was held."""
    device = WaitingDevice()
    h = DeviceHarness(device)
    h.start()
    heads = [h.queues[0].add_chain([Buffer(h.alloc(4), 4, True)]) for _ in range(3)]
    h.kick(0)
    assert device.offered == [heads[0]] and device.held_chains(0) == 1
    assert h.queues[0].used_elements() == []
    device.data = b"ab"
    device.process_queue(0)
    assert device.offered == [heads[0], heads[0], heads[1], heads[2]]
    assert h.queues[0].used_elements() == [(heads[0], 1), (heads[1], 1)]
    assert device.held_chains(0) == 1
    h.write_reg(c.STATUS, 0)
    assert device.held_chains(0) == 0


class PairDevice(VirtioDevice):
    """Each item takes two chains of at least 4 writable bytes: 3 bytes into the first, 1 into
    the second (a frame over two buffers); readable chains are refused."""

    DEVICE_TYPE = 42
    QUEUE_SIZES = (16,)

    def __init__(self) -> None:
        super().__init__("pairs")
        self.items = 0
        self.frames = Frames(self._item, wants=lambda held: len(held) < 2,
                             check=self._problem)

    def handle_queue(self, index: int) -> None:
        self.serve(index, self.frames)

    @staticmethod
    def _problem(chain: DescriptorChain) -> str | None:
        return "readable" if chain.readable or chain.writable_len < 4 else None

    def _item(self, held: HeldChains) -> Sequence[int] | None:
        if len(held) < 2 or not self.items:
            return None
        self.items -= 1
        assert held.room >= 8 and held.descriptors >= 2
        return [3, 1]


def test_frames_gather_chains_refuse_bad_ones_and_complete_items_together() -> None:
    """Frames: chains are held until the item's handler has two; a refused chain is
    completed with 0 and counted; each item's two chains are used in order; without
    work the gathered chains stay held."""
    device = PairDevice()
    h = DeviceHarness(device)
    h.start()
    q = h.queues[0]
    first = q.add_chain([Buffer(h.alloc(4), 4, True)])
    bad = q.add_chain([Buffer(h.alloc(4), 4)])
    second = q.add_chain([Buffer(h.alloc(8), 8, True)])
    h.kick(0)
    assert q.used_elements() == [(bad, 0)] and device.held_chains(0) == 2
    assert device.counters["guest_faults"] == 1
    device.items = 2
    third = q.add_chain([Buffer(h.alloc(4), 4, True)])
    fourth = q.add_chain([Buffer(h.alloc(4), 4, True)])
    interrupts = h.interrupts
    h.kick(0)
    assert q.used_elements() == [(first, 3), (second, 1), (third, 3), (fourth, 1)]
    assert device.held_chains(0) == 0 and h.interrupts == interrupts + 1


def test_a_batch_is_published_with_one_used_idx_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """§2.7.8.2: the chains one kick serves reach the used ring first and ``used->idx`` is
    stored once, after the batch (pure-Python path, whose stores can be watched), with one
    interrupt."""
    monkeypatch.setenv(FASTPATH_ENV, "0")
    device = WaitingDevice()
    device.data = b"abcde"
    h = DeviceHarness(device)
    h.start()
    q = h.queues[0]
    heads = [q.add_chain([Buffer(h.alloc(4), 4, True)]) for _ in range(5)]
    stores: list[int] = []
    write_u16 = h.memory.write_u16

    def logged(gpa: int, value: int) -> None:
        stores.append(gpa)
        write_u16(gpa, value)

    monkeypatch.setattr(h.memory, "write_u16", logged)
    interrupts = h.interrupts
    h.kick(0)
    assert q.used_elements() == [(head, 1) for head in heads]
    assert stores.count(q.used_ring + 2) == 1 and h.interrupts == interrupts + 1
