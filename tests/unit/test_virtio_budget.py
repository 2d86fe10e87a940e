"""The core's serving path (``VirtioDevice.serve``) under hostile load: one kick serves at
most a budget of chains per loop turn and the rest on later turns, with the other devices
of the same loop served in between; a guest error inside one request completes that
request and the batch goes on."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from stratovmm.errors import GuestError
from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.device import SERVE_BUDGET, VirtioDevice

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
        self.serve(index, self._serve)

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
    """200 chains, one kick: each loop turn serves at most SERVE_BUDGET; later turns serve
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
    assert max(per_turn) <= SERVE_BUDGET, per_turn
    assert per_turn[0] == SERVE_BUDGET and len(per_turn) >= 200 // SERVE_BUDGET
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


# -- the real devices that serve through serve ----------------------------------------------


def rng_rig(loop: EventLoop, tmp: str) -> tuple[VirtioDevice, int, list[Buffer]]:
    """rng: one writable buffer per request."""
    from stratovmm_rng.device import RngDevice

    with open(f"{tmp}/entropy", "wb") as f:
        f.write(bytes(range(256)) * 16)
    return RngDevice("rng", f"{tmp}/entropy", loop), 0, []


def blk_rig(loop: EventLoop, tmp: str) -> tuple[VirtioDevice, int, list[Buffer]]:
    """blk without an iothread: FLUSH requests."""
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    with open(f"{tmp}/disk", "wb") as f:
        f.write(bytes(64 * 512))
    return BlockDevice("blk", BlockBackend(f"{tmp}/disk"), "", loop), 0, []


def console_rig(loop: EventLoop, tmp: str) -> tuple[VirtioDevice, int, list[Buffer]]:
    """console: guest output on the transmitq (no client: it is buffered, bounded)."""
    from stratovmm_console.backend import ConsoleSocket
    from stratovmm_console.device import TRANSMITQ, ConsoleDevice

    return ConsoleDevice("con", ConsoleSocket(f"{tmp}/c.sock", loop)), TRANSMITQ, []


def vsock_rig(loop: EventLoop, tmp: str) -> tuple[VirtioDevice, int, list[Buffer]]:
    """vsock: packets on the tx queue."""
    from stratovmm_vsock.backend import UnixBridge
    from stratovmm_vsock.device import TX, VsockDevice

    return VsockDevice("vsock", 3, UnixBridge(f"{tmp}/v.sock", 3, loop)), TX, []


def request(h: DeviceHarness, kind: str) -> list[Buffer]:
    """One request of the shape device ``kind`` serves."""
    if kind == "rng":
        return [Buffer(h.alloc(16), 16, True)]
    if kind == "blk":
        hdr = h.alloc(16)
        h.memory.write(hdr, struct.pack("<IIQ", 4, 0, 0))          # VIRTIO_BLK_T_FLUSH
        return [Buffer(hdr, 16), Buffer(h.alloc(1), 1, True)]
    if kind == "console":
        return [Buffer(h.alloc(8), 8)]
    header = struct.pack("<QQIIIHHIII", 3, 2, 1000, 2000, 0, 1, 3, 0, 0, 0)  # RST: no answer
    addr = h.alloc(len(header))
    h.memory.write(addr, header)
    return [Buffer(addr, len(header))]


RIGS = {"rng": rng_rig, "blk": blk_rig, "console": console_rig, "vsock": vsock_rig}


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_each_device_serves_a_budget_per_turn(kind: str, tmp_path: Path) -> None:
    """rng, blk (no iothread), console tx and vsock tx: 200 requests and one kick are
    served SERVE_BUDGET per loop turn, all of them in the end, without another kick."""
    loop = EventLoop(kind)
    device, index, _ = RIGS[kind](loop, str(tmp_path))
    h = DeviceHarness(device, memory_size=8 << 20, queue_size=QUEUE, loop=loop)
    h.start()
    q = h.queues[index]
    for _ in range(200):
        q.add_chain(request(h, kind))
    h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", index))
    done = []
    for _ in range(20):
        loop.run_once(0)
        done.append(len(q.used_elements()))
        if sum(done) == 200:
            break
    assert done[0] == SERVE_BUDGET and max(done) <= SERVE_BUDGET, done
    assert sum(done) == 200, done
    device.close()


def test_every_call_in_one_turn_shares_the_budget() -> None:
    """Two serve calls in one loop turn (a kick and a host event) together complete at most
    SERVE_BUDGET chains; the rest comes on later turns."""
    loop = EventLoop("budget")
    log: list[str] = []
    h = DeviceHarness(LogDevice("a", log), queue_size=QUEUE, loop=loop)
    h.start()
    post(h, 100)
    h.device.process_queue(0)
    h.device.process_queue(0)
    assert len(log) == SERVE_BUDGET
    loop.run_once(0)
    assert len(log) == 100


def test_a_kick_through_an_eventfd_serves_one_budget_per_turn() -> None:
    """A kick delivered as KVM delivers it (an eventfd the loop polls, whose handler serves
    the queue before the loop's callbacks run): one budget per turn all the same, the retry
    waiting for the next poll."""
    loop = EventLoop("budget")
    log: list[str] = []
    device = LogDevice("a", log)
    h = DeviceHarness(device, queue_size=QUEUE, loop=loop)
    h.start()
    post(h, 200)
    efd = os.eventfd(0, os.EFD_NONBLOCK)

    def on_kick(_events: int) -> None:
        os.eventfd_read(efd)
        device.process_queue(0)

    loop.register(efd, EPOLLIN, on_kick)
    os.eventfd_write(efd, 1)
    per_turn = []
    for _ in range(10):
        before = len(log)
        loop.run_once(0)
        per_turn.append(len(log) - before)
    loop.unregister(efd)
    os.close(efd)
    assert per_turn[:4] == [SERVE_BUDGET] * 3 + [200 - 3 * SERVE_BUDGET], per_turn
