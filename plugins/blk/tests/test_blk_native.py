"""blk's C handler (``stratovmm_blk.native``) against its Python handler: the same requests
on the same image give the same guest-visible memory (data, status bytes, used ring), the
same image and the same counters, whichever path served them.

Requests are drawn as a guest might send them: every type, sectors inside, at the edge
of and far past the capacity, data lengths that are and are not sector multiples, the
header and status in their own buffers (Linux's framing, the one C takes) or merged with
the data, wrong buffer directions, chains the ring walk refuses (a buffer outside RAM:
the used ring keeps the avail ring's order either way), direct or indirect chains,
O_DIRECT on or off, a read-only drive.  Guest RAM is an anonymous mapping
(page-aligned, as a VM's), so the C handler's O_DIRECT alignment check sees what it
would in a VM.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stratovmm_blk.backend import BlockBackend
from stratovmm_blk.device import BlockDevice

from stratovmm.api import EventLoop, GuestMemoryProtocol, SplitQueue
from stratovmm.testing.harness import CountingInterrupt
from stratovmm.testing.kicks import KickWiring
from stratovmm.testing.memory import MappedGuestMemory
from stratovmm.testing.spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

RAM = 0x40000
SIZE = 32
DESC, AVAIL, USED = 0x1000, 0x1400, 0x1800
INDIRECT = 0x2000                       # one 16-entry indirect table per request
DATA = 0x8000
SECTORS = 64
IMAGE = bytes(range(256)) * (SECTORS * 2)
DESC_FMT = struct.Struct("<QIHH")
EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "0")) or 200
TMP = tempfile.mkdtemp(prefix="stratovmm-blk-native-")   # a real file system: O_DIRECT works

# one request: (type, sector, data length, pieces, framing, wrong direction, indirect)
requests = st.tuples(
    st.sampled_from([0, 0, 1, 1, 4, 8, 99]),
    st.one_of(st.integers(0, SECTORS + 2), st.sampled_from([SECTORS - 8, 2**63, 2**64 - 1])),
    st.sampled_from([0, 512, 512, 1024, 4096, 4096, 100, 513]),
    st.integers(1, 3),
    st.sampled_from(["linux", "linux", "linux", "merged-header", "merged-status",
                     "no-status", "short-header", "outside"]),
    st.sampled_from([False] * 7 + [True]),
    st.booleans(),
)


def buffers(request: tuple[Any, ...], serial: int) -> list[tuple[bytes, int, bool]]:
    """(content, length, device-writable) per buffer of one request, in chain order."""
    kind, sector, size, pieces, framing, flipped, _indirect = request
    header = struct.pack("<IIQ", kind, 0, sector)
    data_writable = (kind != 1) != flipped
    piece = size // pieces
    data = [(bytes([serial & 0xFF, kind]) * (piece // 2 + 1), piece, data_writable)] * (
        pieces if size else 0)
    status = (b"\xee", 1, True)
    if framing == "merged-header" and data and not data_writable:
        return [(header + data[0][0], 16 + piece, False), *data[1:], status]
    if framing == "merged-status" and data and data_writable:
        return [(header, 16, False), *data[:-1], (b"", piece + 1, True)]
    if framing == "no-status":
        return [(header, 16, False), *data]
    if framing == "short-header":
        return [(header, 8, False), *data, status]
    return [(header, 16, False), *data, status]


def lay_out(memory: GuestMemoryProtocol, drawn: list[tuple[Any, ...]]) -> None:
    """Each request as a chain (direct, or through its own indirect table), all published."""
    data = DATA
    slot = 0
    for serial, request in enumerate(drawn):
        entries = []
        align = 8 if serial % 3 == 2 else 512          # O_DIRECT can take 2 in 3 as they are
        for content, length, writable in buffers(request, serial):
            data = (data + align - 1) & ~(align - 1)
            memory.write(data, content[:length].ljust(length, b"\0"))
            entries.append((data, length, DESC_F_WRITE if writable else 0))
            data += length
        if request[4] == "outside":            # a chain the ring walk refuses (§2.7.5)
            entries[0] = (RAM + 0x1000, *entries[0][1:])
        head = slot
        if request[-1]:
            table = INDIRECT + 16 * 16 * serial
            for n, (addr, length, flags) in enumerate(entries):
                more = DESC_F_NEXT if n + 1 < len(entries) else 0
                memory.write(table + 16 * n, DESC_FMT.pack(addr, length, flags | more, n + 1))
            memory.write(DESC + 16 * slot, DESC_FMT.pack(table, 16 * len(entries),
                                                         DESC_F_INDIRECT, 0))
            slot += 1
        else:
            for n, (addr, length, flags) in enumerate(entries):
                more = DESC_F_NEXT if n + 1 < len(entries) else 0
                memory.write(DESC + 16 * (slot + n), DESC_FMT.pack(addr, length, flags | more,
                                                                   slot + n + 1))
            slot += len(entries)
        memory.write_u16(AVAIL + 4 + 2 * serial, head)
    memory.write_u16(AVAIL + 2, len(drawn))


def serve(drawn: list[tuple[Any, ...]], fast: bool | str, read_only: bool,
          direct: bool | None) -> tuple[Any, ...]:
    """Run ``drawn`` through a BlockDevice on a fresh image; what the guest and host see.
    ``fast``: the C path (True), pure Python (False), or ``"kick"``: the requests come
    after activation with a kick, which the loop's wait serves in C (KickWiring)."""
    path = os.path.join(TMP, f"disk-{fast}.img")
    with open(path, "wb") as f:
        f.write(IMAGE)
    memory = MappedGuestMemory(RAM)
    lay_out(memory, drawn)
    if fast == "kick":
        memory.write_u16(AVAIL + 2, 0)           # published after activation, with a kick
    loop = EventLoop()
    device = BlockDevice("blk0", BlockBackend(path, read_only, direct), "SERIAL", loop)
    queue = SplitQueue(memory, SIZE, DESC, AVAIL, USED, fastpath=bool(fast))
    assert (queue._native is not None) == bool(fast)
    interrupts = CountingInterrupt()
    wiring = KickWiring(loop, device, [queue]) if fast == "kick" else None
    try:
        device.SERVE_BUDGET = 4                    # runs of C interleave with budget retries
        device.activate(memory, [queue], interrupts, loop)
        if wiring is not None:
            memory.write_u16(AVAIL + 2, len(drawn))
            wiring.kick(0)
        for _ in range(len(drawn) + 1):
            loop.run_once(0)
        with open(path, "rb") as f:
            image = f.read()
        counters = {name: value for name, value in device.counters.items() if value}
        return (memory.read(0, RAM), image, counters, queue.next_used,
                queue.bad_chains, interrupts.resets, device.active)
    finally:
        if wiring is not None:
            wiring.close()
        device.close()
        loop.close()          # (the mapping goes with the last view the queue holds)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=st.lists(requests, min_size=1, max_size=12), read_only=st.booleans(),
       direct=st.sampled_from([False, None]))
def test_c_and_python_handlers_agree(drawn: list[tuple[Any, ...]], read_only: bool,
                                     direct: bool | None) -> None:
    slow = serve(drawn, False, read_only, direct)
    assert serve(drawn, True, read_only, direct) == slow
    assert serve(drawn, "kick", read_only, direct) == slow


@pytest.mark.parametrize("direct", [False, None])
def test_c_serves_linux_reads_and_writes(monkeypatch: pytest.MonkeyPatch,
                                         direct: bool | None) -> None:
    """Reads and writes framed as Linux frames them never reach the Python handler; a
    flush does (and the counters add up either way)."""
    called: list[int] = []
    python_handler = BlockDevice._request

    def spy(self: BlockDevice, chain: Any) -> int:
        called.append(chain.head)
        return python_handler(self, chain)

    monkeypatch.setattr(BlockDevice, "_request", spy)
    drawn = [(1, 8, 4096, 1, "linux", False, True), (0, 8, 4096, 2, "linux", False, False),
             (4, 0, 0, 1, "linux", False, True), (0, 0, 512, 1, "linux", False, True)]
    fast = serve(drawn, True, False, direct)
    assert called == [5]                          # the flush: its chain's head
    assert fast[2]["requests"] == 4
    assert fast[2]["bytes_read"] == 4096 + 512 and fast[2]["bytes_written"] == 4096
    called.clear()
    assert serve(drawn, False, False, direct) == fast
    assert len(called) == 4


def test_without_the_c_path_a_batch_is_one_used_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """STRATOVMM_FASTPATH=0 (no C path for the queue): serve ignores the C handler, so a
    batch's completions are still published together, one used->idx store."""
    stores: list[int] = []
    publish = SplitQueue.add_used_batch

    def spy(self: SplitQueue, elements: Any) -> None:
        if elements:
            stores.append(len(elements))
        publish(self, elements)

    monkeypatch.setattr(SplitQueue, "add_used_batch", spy)
    drawn = [(0, 8, 512, 1, "linux", False, True)] * 4
    serve(drawn, False, False, False)
    assert stores == [4]


def test_a_kick_is_served_in_c_without_a_python_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads and writes published after activation, with one kick: the loop's wait serves
    them in C (no ``process_queue``), raises the interrupt on the irqfd with the used-ring
    bit in InterruptStatus (§4.2.3.4), and the counters and queue state come back to Python
    for ``query-stats``; a flush, which C leaves to Python, makes a Python turn."""
    path = os.path.join(TMP, "disk-kick.img")
    with open(path, "wb") as f:
        f.write(IMAGE)
    memory = MappedGuestMemory(RAM)
    drawn = [(1, 8, 4096, 1, "linux", False, True), (0, 8, 4096, 2, "linux", False, False),
             (4, 0, 0, 1, "linux", False, True)]
    lay_out(memory, drawn)
    memory.write_u16(AVAIL + 2, 0)
    loop = EventLoop()
    device = BlockDevice("blk0", BlockBackend(path, False, False), "SERIAL", loop)
    queue = SplitQueue(memory, SIZE, DESC, AVAIL, USED)
    turns: list[int] = []
    process = BlockDevice.process_queue
    monkeypatch.setattr(BlockDevice, "process_queue",
                        lambda self, index: (turns.append(index), process(self, index)))
    wiring = KickWiring(loop, device, [queue])
    try:
        device.activate(memory, [queue], CountingInterrupt(), loop)
        turns.clear()
        memory.write_u16(AVAIL + 2, 2)
        wiring.kick(0)
        loop.run_once(0)
        assert turns == []
        assert (queue.next_used, queue.last_avail, memory.read_u16(USED + 2)) == (2, 2, 2)
        assert wiring.interrupts() == 1 and wiring.registers.interrupt_status == 1
        assert device.counters["requests"] == 2 and device.counters["bytes_written"] == 4096
        memory.write_u16(AVAIL + 2, 3)
        wiring.kick(0)
        loop.run_once(0)
        assert turns == [0]                        # the flush: Python's
        assert (queue.next_used, memory.read_u16(USED + 2)) == (3, 3)
        assert wiring.served_in_c(0)
        loop.unregister(wiring.eventfds[0])        # (a reset: the loop stops watching it)
        assert not wiring.served_in_c(0)
    finally:
        wiring.close()
        device.close()
        loop.close()


def test_stats_include_what_c_counted_before_it_is_folded() -> None:
    """``query-stats`` read from another thread while the loop waits in C sees the requests
    C served since the last fold (``unfolded_counts``), and folding moves them without
    counting them twice."""
    path = os.path.join(TMP, "disk-stats.img")
    with open(path, "wb") as f:
        f.write(IMAGE)
    memory = MappedGuestMemory(RAM)
    lay_out(memory, [(1, 8, 4096, 1, "linux", False, True), (0, 8, 512, 1, "linux", False, True)])
    loop = EventLoop()
    device = BlockDevice("blk0", BlockBackend(path, False, False), "SERIAL", loop)
    queue = SplitQueue(memory, SIZE, DESC, AVAIL, USED)
    try:
        device.memory, device.queues = memory, [queue]
        device.active = True
        native = device.native_kick(0)
        assert native is not None
        assert queue.serve_native(native, device.serving_flag, 8) == (2, 0)   # STOP_EMPTY
        assert device.counters["requests"] == 0
        stats = device.stats()
        assert (stats["requests"], stats["bytes_written"], stats["bytes_read"]) == (2, 4096, 512)
        device.after_native(0)
        assert device.unfolded_counts() == {} and device.stats() == stats
    finally:
        device.close()
        loop.close()
