"""net's C handlers (``stratovmm_net.native``) against its Python handlers: the same frames
and buffers give the same guest-visible memory (frames, headers, used rings), the same
frames on the tap and the same counters, whichever path moved them.

Drawn as a guest and a host might: transmit headers of every kind (good, offloads the
driver did or did not accept, garbage), frames from too short to too long, split over
buffers or not, chains with device-writable buffers; receive chains of any buffer
sizes (too small for the header, too small for the frame, one or several buffers,
a buffer outside RAM),
host frames from runts to jumbo, more or fewer than there are buffers, a tap whose
queue is full; mergeable receive buffers (Python only) or not.  The tap is a datagram
socketpair (one frame per read and write, as a tap).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stratovmm_net.device import (
    F_CSUM,
    F_HOST_ECN,
    F_HOST_TSO4,
    F_HOST_TSO6,
    F_HOST_UFO,
    F_MRG_RXBUF,
    RX,
    TX,
    NetDevice,
)
from stratovmm_net.tap import Tap

from stratovmm.api import EventLoop, GuestMemoryProtocol, SplitQueue
from stratovmm.testing.harness import CountingInterrupt
from stratovmm.testing.kicks import KickWiring
from stratovmm.testing.memory import MappedGuestMemory
from stratovmm.testing.spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, F_VERSION_1

RAM = 0x200000
SIZE = 32
RINGS = {RX: (0x1000, 0x1400, 0x1800), TX: (0x2000, 0x2400, 0x2800)}
INDIRECT = 0x3000                       # one 16-entry table per chain that wants one
DATA = 0x10000
DESC_FMT = struct.Struct("<QIHH")
EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "0")) or 150
TURNS = 40
MAC = bytes.fromhex("525400123456")

headers = st.one_of(
    st.just((0, 0, 0, 0, 0, 0, 0)),
    st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 3, 4, 0x81, 0x84, 7]),
              st.integers(0, 100), st.integers(0, 1500), st.integers(0, 100),
              st.integers(0, 100), st.integers(0, 3)))
# (header, frame length, pieces, a writable buffer in it, indirect)
transmits = st.tuples(headers, st.sampled_from([0, 10, 14, 60, 1514, 1514, 65550, 65551]),
                      st.integers(1, 3), st.sampled_from([False] * 9 + [True]), st.booleans())
# (buffer sizes, indirect, a buffer outside RAM)
receives = st.tuples(st.lists(st.sampled_from([1, 8, 12, 64, 200, 1526, 1526, 4096]),
                              min_size=1, max_size=3), st.booleans(),
                     st.sampled_from([False] * 9 + [True]))
host_frames = st.sampled_from([5, 26, 60, 100, 1526, 1526, 4000, 9000])
features = st.sets(st.sampled_from([F_CSUM, F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN,
                                    F_HOST_UFO])).map(lambda bits: sum(1 << b for b in bits))


class SocketTap(Tap):
    """A socketpair end as the tap fd; TUNSETOFFLOAD (a tap ioctl) is left out."""

    def set_offload(self, flags: int) -> None:
        self.offload = flags


class Layout:
    """Chains laid out in guest RAM, queue by queue."""

    def __init__(self, memory: GuestMemoryProtocol) -> None:
        self.memory = memory
        self.data = DATA
        self.slots = {RX: 0, TX: 0}
        self.posted = {RX: 0, TX: 0}
        self.tables = 0

    def chain(self, queue: int, buffers: list[tuple[bytes, int, bool]], indirect: bool,
              outside: bool = False) -> None:
        entries = []
        for content, length, writable in buffers:
            self.data = (self.data + 7) & ~7
            self.memory.write(self.data, content[:length].ljust(length, b"\0"))
            entries.append((self.data, length, DESC_F_WRITE if writable else 0))
            self.data += length
        if outside:                        # a chain the ring walk refuses (§2.7.5)
            entries[0] = (RAM + 0x1000, *entries[0][1:])
        desc, avail, _used = RINGS[queue]
        slot = self.slots[queue]
        if indirect:
            table = INDIRECT + 256 * self.tables
            self.tables += 1
            self._write(table, entries, 0)
            self.memory.write(desc + 16 * slot, DESC_FMT.pack(table, 16 * len(entries),
                                                              DESC_F_INDIRECT, 0))
            self.slots[queue] += 1
        else:
            self._write(desc, entries, slot)
            self.slots[queue] += len(entries)
        posted = self.posted[queue]
        self.memory.write_u16(avail + 4 + 2 * posted, slot)
        self.posted[queue] = posted + 1
        self.memory.write_u16(avail + 2, posted + 1)

    def _write(self, table: int, entries: list[tuple[int, int, int]], first: int) -> None:
        for n, (addr, length, flags) in enumerate(entries):
            more = DESC_F_NEXT if n + 1 < len(entries) else 0
            self.memory.write(table + 16 * (first + n),
                              DESC_FMT.pack(addr, length, flags | more, first + n + 1))


def tx_buffers(transmit: tuple[Any, ...], serial: int) -> list[tuple[bytes, int, bool]]:
    header, length, pieces, writable, _indirect = transmit
    data = struct.pack("<BBHHHHH", *header) + bytes([serial & 0xFF]) * length
    step = -(-len(data) // pieces)
    out = [(data[i : i + step], len(data[i : i + step]), False)
           for i in range(0, len(data), step)]
    if writable:
        out.append((b"", 64, True))
    return out


def run(fast: bool | str, acked: int, transmits_: list[Any], receives_: list[Any],
        frames: list[int], small_tap: bool) -> tuple[Any, ...]:
    """Post everything, let the device loop run; what the guest and the host saw (not
    ``last_avail``: a receive chain waiting for a frame is held by Python, popped, and left
    in the ring by C).  ``fast``: the C path (True), pure Python (False), or ``"kick"``:
    the chains come after activation with a kick per queue, which the loop's wait serves
    in C (``KickWiring``), the tap too."""
    os.environ["STRATOVMM_FASTPATH"] = "1" if fast else "0"
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    peer.setblocking(False)
    if small_tap:                           # the host is slow: the tap's queue fills up
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for serial, size in enumerate(frames):
        with contextlib.suppress(BlockingIOError):
            peer.send(bytes([serial]) * size)
    memory = MappedGuestMemory(RAM)
    layout = Layout(memory)
    for serial, transmit in enumerate(transmits_):
        layout.chain(TX, tx_buffers(transmit, serial), transmit[-1])
    for sizes, indirect, outside in receives_:
        layout.chain(RX, [(b"\xee" * n, n, True) for n in sizes], indirect, outside)
    loop = EventLoop()
    device = NetDevice("net0", SocketTap(ours.detach(), "sp0", 0x1F), MAC, loop)
    queues: list[SplitQueue | None] = [
        SplitQueue(memory, SIZE, *RINGS[index], fastpath=fast) for index in (RX, TX)]
    interrupts = CountingInterrupt()
    received = []
    wiring = KickWiring(loop, device, queues) if fast == "kick" else None
    if wiring is not None:                  # published after activation, with a kick
        for index in (RX, TX):
            memory.write_u16(RINGS[index][1] + 2, 0)
    try:
        device.SERVE_BUDGET = 4             # runs of C interleave with budget retries
        device.acked_features = acked | (1 << F_VERSION_1)
        device.activate(memory, queues, interrupts, loop)
        if wiring is not None:
            for index in (RX, TX):
                memory.write_u16(RINGS[index][1] + 2, layout.posted[index])
                wiring.kick(index)
        for _ in range(TURNS):
            loop.run_once(0)
            with contextlib.suppress(BlockingIOError):
                while True:
                    received.append(peer.recv(70000))
        counters = {name: value for name, value in device.counters.items() if value}
        return (memory.read(0, RAM), received, counters,
                [q.next_used for q in queues if q is not None],
                interrupts.resets, device.active)
    finally:
        if wiring is not None:
            wiring.close()
        device.close()
        loop.close()
        peer.close()


@pytest.fixture(autouse=True)
def _restore_fastpath() -> Any:
    saved = os.environ.get("STRATOVMM_FASTPATH")
    yield
    if saved is None:
        os.environ.pop("STRATOVMM_FASTPATH", None)
    else:
        os.environ["STRATOVMM_FASTPATH"] = saved


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(acked=features, mergeable=st.sampled_from([False, False, False, True]),
       transmits_=st.lists(transmits, max_size=8), receives_=st.lists(receives, max_size=8),
       frames=st.lists(host_frames, max_size=10), small_tap=st.booleans())
def test_c_and_python_handlers_agree(acked: int, mergeable: bool, transmits_: list[Any],
                                     receives_: list[Any], frames: list[int],
                                     small_tap: bool) -> None:
    if mergeable:
        acked |= 1 << F_MRG_RXBUF
    slow = run(False, acked, transmits_, receives_, frames, small_tap)
    for fast in (run(True, acked, transmits_, receives_, frames, small_tap),
                 run("kick", acked, transmits_, receives_, frames, small_tap)):
        assert fast[1:] == slow[1:]
        assert fast[0] == slow[0]


def test_c_moves_plain_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain frames both ways never reach the Python handlers (and are all counted)."""
    called: list[str] = []
    for name in ("_transmit_chain", "_receive_frame"):
        python_handler = getattr(NetDevice, name)

        def spy(self: NetDevice, arg: Any, _name: str = name, _h: Any = python_handler) -> Any:
            called.append(_name)
            return _h(self, arg)

        monkeypatch.setattr(NetDevice, name, spy)
    plain = ((0, 0, 0, 0, 0, 0, 0), 60, 1, False, False)
    buffers = [([1526], False, False)] * 4
    fast = run(True, 0, [plain] * 5, buffers, [100] * 4, False)
    assert called == []
    assert len(fast[1]) == 5
    assert fast[2] == {"tx_packets": 5, "tx_bytes": 300, "rx_packets": 4, "rx_bytes": 352}
    assert run(False, 0, [plain] * 5, buffers, [100] * 4, False)[1:] == fast[1:]


def test_c_places_a_frame_over_mergeable_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MRG_RXBUF, frames larger than one buffer go on in the next ones in C (§5.1.6.4,
    num_buffers in the first header); a frame the ring has too few buffers for goes back to
    Python, which waits for more, as it does for its own frames."""
    called: list[int] = []
    python_handler = NetDevice._receive_frame

    def spy(self: NetDevice, held: Any) -> Any:
        called.append(len(held))
        return python_handler(self, held)

    monkeypatch.setattr(NetDevice, "_receive_frame", spy)
    acked = 1 << F_MRG_RXBUF
    buffers = [([1526], False, False)] * 7
    fast = run(True, acked, [], buffers, [4000, 100, 3000], False)
    assert called == []
    assert fast[2] == {"rx_packets": 3, "rx_bytes": 7100 - 3 * 12}
    assert fast[3] == [6, 0]                      # 3 + 1 + 2 chains
    assert fast[0][0x10000 + 10] == 3             # num_buffers of the first frame
    slow = run(False, acked, [], buffers, [4000, 100, 3000], False)
    assert fast[1:] == slow[1:] and fast[0] == slow[0]
    called.clear()
    short = run(True, acked, [], buffers[:2], [4000], False)
    assert called and short[3] == [0, 0] and "rx_packets" not in short[2]


def test_kicks_and_the_tap_are_served_in_c_without_a_python_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames posted after activation, with a kick per queue: the loop's wait moves them in
    C (no ``process_queue``) and raises the interrupt on the irqfd.  Receive buffers with
    no frame for them make Python watch the tap (a turn); the tap's frames are then C's,
    until the last buffer is filled and Python stops watching the tap (a turn)."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    for serial in range(2):
        peer.send(bytes([serial]) * 100)
    memory = MappedGuestMemory(RAM)
    layout = Layout(memory)
    plain = ((0, 0, 0, 0, 0, 0, 0), 60, 1, False, False)
    for serial in range(3):
        layout.chain(TX, tx_buffers(plain, serial), False)
    for _ in range(2):
        layout.chain(RX, [(b"", 1526, True)], False)
    for index in (RX, TX):
        memory.write_u16(RINGS[index][1] + 2, 0)
    loop = EventLoop()
    device = NetDevice("net0", SocketTap(ours.detach(), "sp0", 0x1F), MAC, loop)
    queues: list[SplitQueue | None] = [SplitQueue(memory, SIZE, *RINGS[i]) for i in (RX, TX)]
    turns: list[int] = []
    process = NetDevice.process_queue
    monkeypatch.setattr(NetDevice, "process_queue",
                        lambda self, index: (turns.append(index), process(self, index)))
    wiring = KickWiring(loop, device, queues)
    try:
        device.acked_features = 1 << F_VERSION_1
        device.activate(memory, queues, CountingInterrupt(), loop)
        turns.clear()
        for index in (RX, TX):
            memory.write_u16(RINGS[index][1] + 2, layout.posted[index])
            wiring.kick(index)
        loop.run_once(0)
        assert turns == []
        assert [q.next_used for q in queues if q is not None] == [2, 3]
        assert wiring.interrupts() == 2
        assert device.counters["tx_packets"] == 3 and device.counters["rx_packets"] == 2
        assert len([peer.recv(200) for _ in range(3)]) == 3
        for _ in range(2):
            layout.chain(RX, [(b"", 1526, True)], False)  # (each published at once)
        wiring.kick(RX)
        loop.run_once(0)
        assert turns == [RX]                 # no frame for them: Python watches the tap
        turns.clear()
        peer.send(b"\x07" * 100)
        loop.run_once(0)
        assert turns == [] and device.counters["rx_packets"] == 3
        assert memory.read_u16(RINGS[RX][2] + 2) == 3
        peer.send(b"\x08" * 100)           # the last buffer: the tap has nowhere to go
        loop.run_once(0)
        assert turns == [RX] and device.counters["rx_packets"] == 4
    finally:
        wiring.close()
        device.close()
        loop.close()
        peer.close()
