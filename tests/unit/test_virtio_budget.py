"""The core's serving path (``VirtioDevice.drain``) under hostile load: one kick serves at
most a budget of chains per loop turn and the rest on later turns, with the other devices
of the same loop served in between; a guest error inside one request completes that
request and the batch goes on."""

from __future__ import annotations

import struct

from stratovmm.errors import GuestError
from stratovmm.eventloop import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.device import DRAIN_BUDGET, VirtioDevice

QUEUE = 256


class LogDevice(VirtioDevice):
    """One queue; completes every chain with its readable length and logs its name per chain."""

    DEVICE_TYPE = 42
    QUEUE_SIZES = (QUEUE,)

    def __init__(self, name: str, log: list[str], fail_on: int = -1) -> None:
        super().__init__(name)
        self.log = log
        self.fail_on = fail_on

    def handle_queue(self, index: int) -> None:
        self.drain(index, self._serve)

    def _serve(self, chain: DescriptorChain) -> int:
        self.log.append(self.id)
        if len(self.log) == self.fail_on:
            raise GuestError("the request names something the guest may not ask for")
        return chain.readable_len


def post(h: DeviceHarness, count: int) -> list[int]:
    """``count`` one-buffer chains on queue 0 (not kicked); returns their heads."""
    buf = h.alloc(8)
    return [h.queues[0].add_chain([Buffer(buf, 8)]) for _ in range(count)]


def kick(h: DeviceHarness) -> None:
    """QueueNotify 0 without running the loop (the caller steps the loop by hand)."""
    h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", 0))


def test_one_kick_serves_at_most_the_budget_per_loop_turn() -> None:
    """200 chains, one kick: each loop turn serves at most DRAIN_BUDGET; later turns serve
    the rest without another kick; every chain comes back once."""
    loop = EventLoop("budget")
    log: list[str] = []
    h = DeviceHarness(LogDevice("a", log), queue_size=QUEUE, loop=loop)
    h.start()
    heads = post(h, 200)
    kick(h)
    per_turn = []
    for _ in range(20):
        before = len(log)
        loop.run_once(0)
        per_turn.append(len(log) - before)
        if len(log) == 200:
            break
    assert max(per_turn) <= DRAIN_BUDGET, per_turn
    assert per_turn[0] == DRAIN_BUDGET and len(per_turn) >= 200 // DRAIN_BUDGET
    assert sorted(head for head, _len in h.queues[0].used_elements()) == sorted(heads)


def test_another_device_on_the_same_loop_runs_between_budgets() -> None:
    """While device a works through a full ring, device b's kick is served within a turn,
    long before a has finished."""
    loop = EventLoop("budget")
    log: list[str] = []
    a = DeviceHarness(LogDevice("a", log), queue_size=QUEUE, loop=loop)
    b = DeviceHarness(LogDevice("b", log), queue_size=QUEUE, loop=loop)
    a.start()
    b.start()
    post(a, 250)
    kick(a)
    loop.run_once(0)
    post(b, 1)
    kick(b)
    loop.run_once(0)
    assert "b" in log, "b waited behind a's whole ring"
    for _ in range(20):
        loop.run_once(0)
    assert log.count("a") == 250 and log.count("b") == 1
    assert log.index("b") < len(log) - 100, "b ran only after a had drained"


def test_guest_error_in_a_request_completes_it_and_the_batch_goes_on() -> None:
    """A handler that raises GuestError on the 2nd of 5 chains: that chain is used with
    length 0, counted as a guest fault, and chains 3..5 are still served."""
    loop = EventLoop("budget")
    log: list[str] = []
    h = DeviceHarness(LogDevice("a", log, fail_on=2), queue_size=16, loop=loop)
    h.start()
    heads = post(h, 5)
    h.kick(0)
    used = dict(h.queues[0].used_elements())
    assert sorted(used) == sorted(heads)
    assert used[heads[1]] == 0 and used[heads[0]] == used[heads[4]] == 8
    assert h.device.counters["guest_faults"] == 1
    assert h.device.active and not h.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET
