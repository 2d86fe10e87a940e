"""A batch that ends exactly at the serve budget with the ring empty, under EVENT_IDX:
the device must still ask for the next kick (§2.7.10 avail_event), or a driver that
adds requests afterwards never kicks again and waits for ever."""

from __future__ import annotations

import struct
from collections.abc import Callable

from stratovmm.host.eventloop import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.device import SERVE_BUDGET, VirtioDevice

QUEUE = 256


class CountingDevice(VirtioDevice):
    """One queue; completes every chain with length 0; ``meanwhile`` runs while the
    budget's last chain is served (the driver, on another CPU, adding one)."""

    DEVICE_TYPE = 42
    QUEUE_SIZES = (QUEUE,)

    def __init__(self, meanwhile: Callable[[], object] | None = None) -> None:
        super().__init__("counting")
        self.served = 0
        self.meanwhile = meanwhile

    def handle_queue(self, index: int) -> None:
        self.serve(index, self._serve)

    def _serve(self, chain: DescriptorChain) -> int:
        self.served += 1
        if self.served == SERVE_BUDGET and self.meanwhile is not None:
            self.meanwhile()
        return 0


def vring_need_event(event: int, new: int, old: int) -> bool:
    """The driver's kick test (§2.7.10, Linux ``vring_need_event``)."""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


def test_a_batch_of_exactly_the_budget_asks_for_the_next_kick() -> None:
    """SERVE_BUDGET chains and one kick: all are served in one turn, nothing is left to
    retry, and avail_event makes the driver's next chain kick."""
    loop = EventLoop("budget-event-idx")
    device = CountingDevice()
    h = DeviceHarness(device, queue_size=QUEUE, loop=loop)
    h.start(event_idx=True)
    q = h.queues[0]
    buf = h.alloc(8)
    for _ in range(SERVE_BUDGET):
        q.add_chain([Buffer(buf, 8)])
    h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", 0))
    for _ in range(5):
        loop.run_once(0)
    assert device.served == SERVE_BUDGET
    q.add_chain([Buffer(buf, 8)])
    assert vring_need_event(q.avail_event(), SERVE_BUDGET + 1, SERVE_BUDGET), (
        f"avail_event {q.avail_event()}: the driver would not kick for chain {SERVE_BUDGET}")


def test_a_chain_added_during_the_batch_is_served_without_a_kick() -> None:
    """A chain the driver adds while the budget's last chain is served (so before the
    device re-enables notifications) is served on a later turn, with no kick."""
    loop = EventLoop("budget-event-idx")
    device = CountingDevice(meanwhile=lambda: h.queues[0].add_chain([Buffer(buf, 8)]))
    h = DeviceHarness(device, queue_size=QUEUE, loop=loop)
    h.start(event_idx=True)
    buf = h.alloc(8)
    for _ in range(SERVE_BUDGET):
        h.queues[0].add_chain([Buffer(buf, 8)])
    h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", 0))
    for _ in range(5):
        loop.run_once(0)
    assert device.served == SERVE_BUDGET + 1
