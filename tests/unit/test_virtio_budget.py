"""The core's serving path (``VirtioDevice.serve``) under hostile load: one kick serves at
most a budget of chains per loop turn and the rest on later turns, with the other devices
of the same loop served in between; a guest error inside one request completes that
request and the batch goes on."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stratovmm.errors import GuestError
from stratovmm.fastpath import fastpath_enabled
from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer
from stratovmm.virtio import constants as c
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.device import NATIVE_WEIGHT, SERVE_BUDGET, VirtioDevice

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


# -- every real device, every kind of queue it serves ------------------------------------------

ITEMS = 200
BUDGET = 16         # (below the default, so that ITEMS spans turns in C too)
VSOCK_HEADER = struct.Struct("<QQIIIHHIII")     # §5.10.6 struct virtio_vsock_hdr


@dataclass
class Rig:
    """A device under test, the queue to flood, and what to close afterwards."""

    device: VirtioDevice
    index: int
    load: Callable[[DeviceHarness], None]      # posts ITEMS requests (and the host's data)
    closers: list[Callable[[], None]] = field(default_factory=list)
    native: bool = False        # the device's C handler serves these items (fast path on)


def each(h: DeviceHarness, index: int, make: Callable[[], list[Buffer]]) -> None:
    """``items(h, index)`` chains made by ``make`` on queue ``index``, not kicked."""
    for _ in range(items(h, index)):
        h.queues[index].add_chain(make())


def items(h: DeviceHarness, index: int) -> int:
    """ITEMS, or fewer for a smaller queue (balloon's are 128 entries)."""
    return min(ITEMS, h.queues[index].size)


def readable(h: DeviceHarness, data: bytes) -> Buffer:
    """A device-readable buffer holding ``data``."""
    addr = h.alloc(len(data))
    h.memory.write(addr, data)
    return Buffer(addr, len(data))


def rng_rig(loop: EventLoop, tmp: str) -> Rig:
    """rng: one writable buffer per request."""
    from stratovmm_rng.device import RngDevice

    with open(f"{tmp}/entropy", "wb") as f:
        f.write(bytes(range(256)) * 16)
    return Rig(RngDevice("rng", f"{tmp}/entropy", loop), 0,
               lambda h: each(h, 0, lambda: [Buffer(h.alloc(16), 16, True)]))


def blk_rig(loop: EventLoop, tmp: str) -> Rig:
    """blk without an iothread: FLUSH requests."""
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    with open(f"{tmp}/disk", "wb") as f:
        f.write(bytes(64 * 512))
    flush = struct.pack("<IIQ", 4, 0, 0)                  # VIRTIO_BLK_T_FLUSH
    return Rig(BlockDevice("blk", BlockBackend(f"{tmp}/disk"), "", loop), 0,
               lambda h: each(h, 0, lambda: [readable(h, flush), Buffer(h.alloc(1), 1, True)]))


def blk_read_rig(loop: EventLoop, tmp: str) -> Rig:
    """blk without an iothread: 512-byte reads, framed as Linux frames them (C serves them)."""
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    with open(f"{tmp}/disk", "wb") as f:
        f.write(bytes(64 * 512))
    read = struct.pack("<IIQ", 0, 0, 3)                   # VIRTIO_BLK_T_IN, sector 3

    def load(h: DeviceHarness) -> None:
        for _ in range(items(h, 0)):                      # indirect: 3 buffers, 1 slot each
            h.queues[0].add_indirect_chain(h.alloc(48), [
                readable(h, read), Buffer(h.alloc(512), 512, True), Buffer(h.alloc(1), 1, True)])

    return Rig(BlockDevice("blk", BlockBackend(f"{tmp}/disk"), "", loop), 0, load, native=True)


def balloon_rig(loop: EventLoop, tmp: str) -> Rig:
    """balloon: deflate requests of one page number each."""
    from stratovmm_balloon.device import DEFLATEQ, BalloonDevice

    return Rig(BalloonDevice("balloon", 8 << 20, loop), DEFLATEQ,
               lambda h: each(h, DEFLATEQ, lambda: [readable(h, struct.pack("<I", 1))]))


def console_tx_rig(loop: EventLoop, tmp: str) -> Rig:
    """console transmitq: guest output (no client: it is buffered, bounded)."""
    from stratovmm_console.backend import ConsoleSocket
    from stratovmm_console.device import TRANSMITQ, ConsoleDevice

    return Rig(ConsoleDevice("con", ConsoleSocket(f"{tmp}/c.sock", loop)), TRANSMITQ,
               lambda h: each(h, TRANSMITQ, lambda: [readable(h, b"output\n")]))


def console_rx_rig(loop: EventLoop, tmp: str) -> Rig:
    """console receiveq: a client typed ITEMS bytes; one-byte receive buffers."""
    from stratovmm_console.backend import ConsoleSocket
    from stratovmm_console.device import RECEIVEQ, ConsoleDevice

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rig = Rig(ConsoleDevice("con", ConsoleSocket(f"{tmp}/c.sock", loop)), RECEIVEQ,
              lambda h: None, [client.close])

    def load(h: DeviceHarness) -> None:
        client.connect(f"{tmp}/c.sock")
        loop.run_once(0)                                    # accepted
        client.sendall(b"k" * ITEMS)
        each(h, RECEIVEQ, lambda: [Buffer(h.alloc(1), 1, True)])

    rig.load = load
    return rig


def vsock_tx_rig(loop: EventLoop, tmp: str) -> Rig:
    """vsock tx: RST packets (the bridge answers nothing)."""
    from stratovmm_vsock.backend import UnixBridge
    from stratovmm_vsock.device import TX, VsockDevice

    rst = VSOCK_HEADER.pack(3, 2, 1000, 2000, 0, 1, 3, 0, 0, 0)
    return Rig(VsockDevice("vsock", 3, UnixBridge(f"{tmp}/v.sock", 3, loop)), TX,
               lambda h: each(h, TX, lambda: [readable(h, rst)]))


def vsock_rx_rig(loop: EventLoop, tmp: str) -> Rig:
    """vsock rx: a stream the guest opened to host port 5000, whose host end wrote
    ITEMS * 4 bytes; rx buffers with room for a header and 4 bytes each."""
    from stratovmm_vsock.backend import UnixBridge
    from stratovmm_vsock.device import RX, TX, VsockDevice

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{tmp}/v.sock_5000")
    listener.listen(1)
    rig = Rig(VsockDevice("vsock", 3, UnixBridge(f"{tmp}/v.sock", 3, loop)), RX,
              lambda h: None, [listener.close])

    def load(h: DeviceHarness) -> None:
        h.queues[RX].add_chain([Buffer(h.alloc(48), 48, True)])       # for the RESPONSE
        request = VSOCK_HEADER.pack(3, 2, 1234, 5000, 0, 1, 1, 0, 1 << 20, 0)
        h.queues[TX].add_chain([readable(h, request)])
        h.kick(TX)
        host, _ = listener.accept()
        rig.closers.append(host.close)
        assert len(h.queues[RX].used_elements()) == 1, "no RESPONSE"
        each(h, RX, lambda: [Buffer(h.alloc(48), 48, True)])
        host.sendall(b"v" * 4 * ITEMS)

    rig.load = load
    return rig


def net_rig(loop: EventLoop, index: int) -> tuple[Rig, socket.socket]:
    """virtio-net on a datagram socketpair standing in for the tap; the host's end."""
    from stratovmm_net.device import NetDevice
    from stratovmm_net.tap import Tap

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (ours, peer):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    class SocketTap(Tap):
        def set_offload(self, flags: int) -> None:
            """A socket has no offloads to set."""

    tap = SocketTap(ours.detach(), "sp0", 0)            # the device closes the fd
    device = NetDevice("net", tap, bytes.fromhex("525400123456"), loop)
    return Rig(device, index, lambda h: None, [peer.close]), peer


FRAME = bytes(12) + b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x88\xb5" + bytes(46)


def net_tx_rig(loop: EventLoop, tmp: str) -> Rig:
    """net transmitq: minimum-size frames for the tap."""
    from stratovmm_net.device import TX

    rig, _peer = net_rig(loop, TX)
    rig.load = lambda h: each(h, TX, lambda: [readable(h, FRAME)])
    rig.native = True
    return rig


def net_rx_rig(loop: EventLoop, tmp: str) -> Rig:
    """net receiveq: ITEMS frames waiting in the tap; 128-byte receive buffers."""
    from stratovmm_net.device import RX

    rig, peer = net_rig(loop, RX)

    def load(h: DeviceHarness) -> None:
        for _ in range(ITEMS):
            peer.send(FRAME)
        each(h, RX, lambda: [Buffer(h.alloc(128), 128, True)])

    rig.load = load
    rig.native = True
    return rig


RIGS = {"rng": rng_rig, "blk": blk_rig, "blk-read": blk_read_rig, "balloon": balloon_rig,
        "console-tx": console_tx_rig, "console-rx": console_rx_rig, "vsock-tx": vsock_tx_rig,
        "vsock-rx": vsock_rx_rig, "net-tx": net_tx_rig, "net-rx": net_rx_rig}


@pytest.mark.parametrize("kind", sorted(RIGS))
def test_every_device_serves_a_budget_per_turn_and_its_neighbours_in_between(
        kind: str, tmp_path: Path) -> None:
    """Each device and kind of queue (requests, transmit, receive with the host's data
    waiting): ITEMS requests and one kick are served at most a budget per loop turn (of
    BUDGET items, NATIVE_WEIGHT times as many where the device's C handler serves them),
    a full budget first, all of them in the end without another kick, while a neighbour
    device on the same loop, kicked every turn, is served in every turn."""
    loop = EventLoop(kind)
    rig = RIGS[kind](loop, str(tmp_path))
    rig.device.SERVE_BUDGET = BUDGET
    limit = BUDGET * NATIVE_WEIGHT if rig.native and fastpath_enabled() else BUDGET
    h = DeviceHarness(rig.device, memory_size=8 << 20, queue_size=QUEUE, loop=loop)
    log: list[str] = []
    neighbour = DeviceHarness(LogDevice("neighbour", log), loop=loop)
    try:
        h.start()
        neighbour.start()
        rig.load(h)
        queue = h.queues[rig.index]
        h.transport.write(c.QUEUE_NOTIFY, struct.pack("<I", rig.index))
        done: list[int] = []
        while sum(done) < items(h, rig.index) and len(done) < 20:
            post(neighbour, 1)
            kick(neighbour)
            before = len(log)
            loop.run_once(0)
            done.append(len(queue.used_elements()))
            assert len(log) == before + 1, f"the neighbour waited (turn {len(done)})"
        assert done[0] == limit and max(done) <= limit, done
        assert sum(done) == items(h, rig.index), done
    finally:
        rig.device.close()
        for close in rig.closers:
            close()
        loop.close()


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
