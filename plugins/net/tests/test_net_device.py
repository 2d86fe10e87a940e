"""virtio-net (virtio 1.2 §5.1) through the real transport, no KVM: a datagram socketpair
stands in for the tap (one frame per read or write, as a tap does)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from stratovmm_net.device import (
    F_CSUM,
    F_GUEST_CSUM,
    F_GUEST_ECN,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    F_GUEST_UFO,
    F_HOST_TSO4,
    F_HOST_UFO,
    F_MAC,
    F_MRG_RXBUF,
    F_STATUS,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP,
    HDR_F_NEEDS_CSUM,
    MAX_FRAME,
    RX,
    TX,
    NetDevice,
    format_mac,
    generated_mac,
    parse_mac,
    tap_offloads,
)
from stratovmm_net.tap import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    VNET_HDR_LEN,
    Tap,
)

from stratovmm.api import ConfigError, EventLoop
from stratovmm.testing import spec as c
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

pytestmark = pytest.mark.unit

MAC = bytes.fromhex("525400123456")
ALL_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO
HDR = struct.Struct("<BBHHHHH")


class FakeTap(Tap):
    """One end of a SOCK_DGRAM socketpair; records TUNSETOFFLOAD calls."""

    def __init__(self, sock: socket.socket, offloads: int = ALL_OFFLOADS) -> None:
        sock.setblocking(False)
        super().__init__(sock.fileno(), "fake0", offloads)
        self.sock = sock
        self.offload_calls: list[int] = []

    def set_offload(self, flags: int) -> None:
        self.offload_calls.append(flags)

    def close(self) -> None:
        self.sock.close()
        self.fd = -1


class Rig:
    """A NetDevice on a FakeTap, driven through DeviceHarness; ``peer`` is the host side."""

    def __init__(self, features: int | None = None, offloads: int = ALL_OFFLOADS,
                 tap: bool = True, event_idx: bool = False,
                 kind: socket.SocketKind = socket.SOCK_DGRAM) -> None:
        ours, self.peer = socket.socketpair(socket.AF_UNIX, kind)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.peer.settimeout(2)
        self.tap = FakeTap(ours, offloads) if tap else None
        if not tap:
            ours.close()
        self.loop = EventLoop("net-test")
        self.device = NetDevice("n0", self.tap, MAC, self.loop)
        self.h = DeviceHarness(self.device, memory_size=8 << 20, queue_size=64, loop=self.loop)
        assert self.h.start(features, event_idx=event_idx) & c.STATUS_DRIVER_OK

    @property
    def memory(self):  # type: ignore[no-untyped-def]
        return self.h.memory

    def close(self) -> None:
        self.device.close()
        self.peer.close()
        self.loop.close()

    # -- transmit ------------------------------------------------------------------------------

    def send(self, header: bytes, frame: bytes, split: int = 0) -> None:
        """Post header+frame as one TX chain (optionally cut into pieces of ``split`` bytes)."""
        data = header + frame
        pieces = [data] if not split else [data[i : i + split] for i in range(0, len(data), split)]
        buffers = []
        for piece in pieces:
            addr = self.h.alloc(len(piece))
            self.memory.write(addr, piece)
            buffers.append(Buffer(addr, len(piece)))
        self.h.queues[TX].add_chain(buffers)
        self.h.kick(TX)

    # -- receive -------------------------------------------------------------------------------

    def post_rx(self, *sizes: int, kick: bool = True) -> list[int]:
        """Post one writable chain per size; returns their addresses."""
        addrs = []
        for size in sizes:
            addr = self.h.alloc(size)
            self.memory.write(addr, b"\xee" * size)
            self.h.queues[RX].add_chain([Buffer(addr, size, True)])
            addrs.append(addr)
        if kick:
            self.h.kick(RX)
        return addrs

    def host_sends(self, frame: bytes, header: bytes = bytes(VNET_HDR_LEN)) -> None:
        """The tap hands the device ``header + frame``; run the loop (a second turn places
        the tail of a frame that spilled past its first buffer)."""
        self.peer.send(header + frame)
        self.loop.run_once(0.5)
        self.loop.run_once(0)

    def armed(self) -> bool:
        assert self.tap is not None
        return self.loop.watching(self.tap.fd)


def ether(payload: bytes) -> bytes:
    """A broadcast Ethernet frame of an experimental ethertype."""
    return b"\xff" * 6 + MAC + b"\x88\xb5" + payload


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


# -- features, config space, MAC ------------------------------------------------------------------


def test_config_space_holds_mac_and_link_up(rig: Rig) -> None:
    """§5.1.4: mac at offset 0, status LINK_UP at offset 6, one queue pair."""
    assert rig.h.read_config(0, 6) == MAC
    assert struct.unpack("<HH", rig.h.read_config(6, 4)) == (1, 1)


def test_offered_features_follow_the_tap_offloads() -> None:
    """GUEST_* bits are offered only for offloads the tap accepted; MAC, STATUS, MRG_RXBUF,
    CSUM and HOST_TSO4 always; HOST_UFO only when the tap takes UFO."""
    full = Rig(offloads=ALL_OFFLOADS)
    none = Rig(offloads=0)
    try:
        offered_full, offered_none = full.h.device_features(), none.h.device_features()
    finally:
        full.close()
        none.close()
    for bit in (F_MAC, F_STATUS, F_MRG_RXBUF, F_CSUM, F_HOST_TSO4):
        assert offered_full & (1 << bit) and offered_none & (1 << bit)
    for bit in (F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN, F_GUEST_UFO, F_HOST_UFO):
        assert offered_full & (1 << bit)
        assert not offered_none & (1 << bit)


def test_acked_receive_offloads_reach_the_tap(rig: Rig) -> None:
    """DRIVER_OK sets TUNSETOFFLOAD from the GUEST_* bits the driver accepted."""
    assert rig.tap is not None
    assert rig.tap.offload_calls == [ALL_OFFLOADS]


def test_receive_offloads_need_guest_csum() -> None:
    """§5.1.3.1: TSO/UFO without GUEST_CSUM enable nothing; ECN needs a TSO."""
    assert tap_offloads((1 << F_GUEST_TSO4) | (1 << F_GUEST_UFO)) == 0
    assert tap_offloads((1 << F_GUEST_CSUM) | (1 << F_GUEST_ECN)) == TUN_F_CSUM
    assert tap_offloads((1 << F_GUEST_CSUM) | (1 << F_GUEST_TSO6)) == TUN_F_CSUM | TUN_F_TSO6


def test_mac_parsing_and_generation() -> None:
    """Colon or dash MACs parse; multicast, zero and malformed ones are refused by name;
    generated MACs are stable, unicast and locally administered."""
    assert parse_mac("52:54:00:12:34:56", "-netdev mac") == MAC
    assert parse_mac("52-54-00-12-34-56", "-netdev mac") == MAC
    for bad, reason in (("01:00:5e:00:00:01", "multicast"), ("00:00:00:00:00:00", "usable"),
                        ("52:54:00:12:34", "not a MAC"), ("52:54:00-12:34:56", "not a MAC")):
        with pytest.raises(ConfigError, match=f"-netdev mac: .*{reason}"):
            parse_mac(bad, "-netdev mac")
    mac = generated_mac("tap0/net0")
    assert mac == generated_mac("tap0/net0") != generated_mac("tap1/net0")
    assert mac[0] & 0b11 == 0b10
    assert format_mac(MAC) == "52:54:00:12:34:56"


# -- transmit --------------------------------------------------------------------------------------


def test_tx_chain_reaches_the_tap_whole(rig: Rig) -> None:
    """A chain cut into 5-byte pieces arrives on the tap as one frame, header included."""
    frame = ether(bytes(range(200)))
    header = HDR.pack(0, GSO_NONE, 0, 0, 0, 0, 0)
    rig.send(header, frame, split=5)
    assert rig.peer.recv(65536) == header + frame
    assert rig.h.queues[TX].used_elements()[0][1] == 0
    assert rig.device.counters["tx_packets"] == 1
    assert rig.device.counters["tx_bytes"] == len(frame)
    assert rig.h.interrupts >= 1


def test_stats_report_frames_bytes_and_faults(rig: Rig) -> None:
    """stats() (QMP query-stats) has every net counter, zero or not, and the common names."""
    rig.send(bytes(VNET_HDR_LEN), ether(b"abc"))
    rig.send(b"\0" * 4, b"")
    stats = rig.device.stats()
    assert stats["tx_packets"] == 1 and stats["requests"] == 1
    assert stats["bytes_written"] == stats["tx_bytes"] == 17
    assert stats["tx_malformed"] == 1 and stats["guest_faults"] == 1
    assert stats["rx_packets"] == stats["rx_dropped"] == stats["tx_oversized"] == 0


def test_tx_with_checksum_and_tso_offload_passes(rig: Rig) -> None:
    """A TSO frame with NEEDS_CSUM and an MSS is passed to the tap as it is."""
    frame = ether(bytes(3000))
    header = HDR.pack(HDR_F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16, 0)
    rig.send(header, frame)
    assert rig.peer.recv(65536) == header + frame


@pytest.mark.parametrize("header,frame_len,counter", [
    (b"\0" * 8, 0, "tx_malformed"),                                       # short header
    (HDR.pack(0, 0, 0, 0, 0, 0, 0), 10, "tx_malformed"),                  # no Ethernet header
    (HDR.pack(0, 0, 0, 0, 0, 0, 0), MAX_FRAME + 1, "tx_oversized"),       # > 65550 bytes
    (HDR.pack(2, 0, 0, 0, 0, 0, 0), 60, "tx_malformed"),                  # DATA_VALID on TX
    (HDR.pack(0, GSO_TCPV4, 54, 1448, 0, 0, 0), 3000, "tx_malformed"),    # GSO w/o NEEDS_CSUM
    (HDR.pack(1, GSO_TCPV4, 54, 0, 34, 16, 0), 3000, "tx_malformed"),     # GSO with MSS 0
    (HDR.pack(1, 9, 54, 1448, 34, 16, 0), 3000, "tx_malformed"),          # unknown GSO type
    (HDR.pack(1, GSO_NONE | GSO_ECN, 0, 0, 34, 16, 0), 60, "tx_malformed"),  # ECN, no GSO
    (HDR.pack(1, 0, 0, 0, 50, 16, 0), 60, "tx_malformed"),                # csum past the end
])
def test_bad_tx_chains_are_dropped_and_counted(rig: Rig, header: bytes, frame_len: int,
                                               counter: str) -> None:
    """Malformed or oversized frames never reach the tap; each is counted, the chain is
    completed, and the next good frame still goes through."""
    rig.send(header, bytes(frame_len))
    assert rig.device.counters[counter] == 1
    assert rig.device.counters["guest_faults"] == 1
    assert len(rig.h.queues[TX].used_elements()) == 1
    good = ether(b"ok")
    rig.send(bytes(VNET_HDR_LEN), good)
    assert rig.peer.recv(65536) == bytes(VNET_HDR_LEN) + good


def test_gso_needs_the_negotiated_host_feature() -> None:
    """§5.1.6.2.1: a TSO frame from a driver that did not accept HOST_TSO4 is dropped;
    UFO without HOST_UFO likewise."""
    r = Rig(features=(1 << c.F_VERSION_1) | (1 << F_CSUM) | (1 << F_MRG_RXBUF))
    try:
        r.send(HDR.pack(1, GSO_TCPV4, 54, 1448, 34, 16, 0), ether(bytes(3000)))
        r.send(HDR.pack(1, GSO_UDP, 42, 1400, 34, 6, 0), ether(bytes(3000)))
        assert r.device.counters["tx_malformed"] == 2
        r.peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            r.peer.recv(65536)
    finally:
        r.close()


def test_tx_without_a_tap_is_dropped() -> None:
    """An empty hot-replace slot drops what the driver sends (counted, chain completed)."""
    r = Rig(tap=False)
    try:
        r.send(bytes(VNET_HDR_LEN), ether(b"x"))
        assert r.device.counters["tx_dropped"] == 1
        assert len(r.h.queues[TX].used_elements()) == 1
    finally:
        r.close()


# -- receive ---------------------------------------------------------------------------------------


def used_payload(rig: Rig, addrs: list[int], used: list[tuple[int, int]]) -> bytes:
    heads = {h: n for h, n in used}
    out = b""
    for index, addr in enumerate(addrs):
        if index in heads:
            out += rig.memory.read(addr, heads[index])
    return out


def test_rx_frame_spans_mergeable_buffers(rig: Rig) -> None:
    """§5.1.6.4: a 4000-byte frame fills three 1536-byte buffers, num_buffers = 3 in the
    first header; a small frame after it takes one buffer with num_buffers = 1."""
    addrs = rig.post_rx(*[1536] * 8)
    assert rig.armed()
    frame = ether(bytes(i % 251 for i in range(4000 - VNET_HDR_LEN - 14)))
    rig.host_sends(frame)
    used = rig.h.queues[RX].used_elements()
    assert [n for _h, n in used] == [1536, 1536, 4000 - 2 * 1536]
    data = b"".join(rig.memory.read(addrs[h], n) for h, n in used)
    assert HDR.unpack(data[:VNET_HDR_LEN])[6] == 3
    assert data[VNET_HDR_LEN:] == frame
    small = ether(b"ping")
    rig.host_sends(small)
    (head, length), = rig.h.queues[RX].used_elements()
    assert head == 3 and length == VNET_HDR_LEN + len(small)
    got = rig.memory.read(addrs[3], length)
    assert HDR.unpack(got[:VNET_HDR_LEN])[6] == 1 and got[VNET_HDR_LEN:] == small
    assert rig.device.counters["rx_packets"] == 2
    assert rig.h.interrupts >= 2


def test_tap_is_watched_only_while_the_driver_has_buffers(rig: Rig) -> None:
    """No receive buffers: the tap fd is not on the loop (no polling) and frames wait in the
    tap; a kick with buffers re-arms it and the waiting frame is delivered."""
    assert not rig.armed()
    frame = ether(b"waiting")
    rig.host_sends(frame)
    assert rig.h.queues[RX].used_elements() == []
    addrs = rig.post_rx(2048)
    (_head, length), = rig.h.queues[RX].used_elements()
    assert rig.memory.read(addrs[0] + VNET_HDR_LEN, length - VNET_HDR_LEN) == frame
    assert not rig.armed()          # the only buffer was used: watching would be polling


def test_frame_larger_than_the_buffers_waits_for_more(rig: Rig) -> None:
    """A 5000-byte frame with 2 x 1536 bytes posted spills into the host overflow buffer;
    tap reads pause until the driver posts more, then the frame completes over 4 buffers."""
    first = rig.post_rx(1536, 1536)
    frame = ether(bytes(i % 253 for i in range(5000 - VNET_HDR_LEN - 14)))
    rig.host_sends(frame)
    assert rig.h.queues[RX].used_elements() == []
    assert not rig.armed()
    later = rig.post_rx(1536, 1536)
    used = rig.h.queues[RX].used_elements()
    assert [n for _h, n in used] == [1536, 1536, 1536, 5000 - 3 * 1536]
    addrs = first + later
    data = b"".join(rig.memory.read(addrs[h], n) for h, n in used)
    assert HDR.unpack(data[:VNET_HDR_LEN])[6] == 4
    assert data[VNET_HDR_LEN:] == frame


def test_rx_without_mergeable_buffers_uses_one_chain_per_frame() -> None:
    """Without MRG_RXBUF each frame takes one chain (num_buffers 1); a frame larger than the
    chain is dropped and counted, and the chain serves the next frame."""
    r = Rig(features=(1 << c.F_VERSION_1) | (1 << F_MAC))
    try:
        addrs = r.post_rx(1600, 1600)
        r.host_sends(ether(bytes(3000)))
        assert r.device.counters["rx_dropped"] == 1
        assert r.h.queues[RX].used_elements() == []
        frame = ether(b"fits")
        r.host_sends(frame)
        (head, length), = r.h.queues[RX].used_elements()
        got = r.memory.read(addrs[head], length)
        assert HDR.unpack(got[:VNET_HDR_LEN])[6] == 1 and got[VNET_HDR_LEN:] == frame
    finally:
        r.close()


def test_rx_buffers_that_cannot_hold_a_header_are_refused(rig: Rig) -> None:
    """§5.1.6.3.1: a receive chain shorter than the header, or device-readable, is completed
    with length 0 and counted; good buffers after it still receive."""
    q = rig.h.queues[RX]
    q.add_chain([Buffer(rig.h.alloc(8), 8, True)])
    q.add_chain([Buffer(rig.h.alloc(64), 64)])
    good = rig.post_rx(2048)
    frame = ether(b"after")
    rig.host_sends(frame)
    used = q.used_elements()
    assert [n for _h, n in used] == [0, 0, VNET_HDR_LEN + len(frame)]
    assert rig.memory.read(good[0] + VNET_HDR_LEN, len(frame)) == frame
    assert rig.device.counters["guest_faults"] == 2


def test_oversized_frame_from_the_host_is_dropped(rig: Rig) -> None:
    """A frame beyond 65550 bytes is dropped and counted; the buffers stay for the next."""
    rig.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    rig.post_rx(*[4096] * 20)
    rig.host_sends(bytes(MAX_FRAME + 100))
    assert rig.device.counters["rx_dropped"] == 1
    assert rig.h.queues[RX].used_elements() == []
    rig.host_sends(ether(b"next"))
    assert len(rig.h.queues[RX].used_elements()) == 1


def test_rx_batch_then_the_loop_comes_back(rig: Rig) -> None:
    """More frames than one batch: each loop iteration serves a batch, none is lost."""
    rig.post_rx(*[256] * 60)
    for i in range(100):
        rig.peer.send(bytes(VNET_HDR_LEN) + ether(bytes([i]) * 40))
    for _ in range(4):
        rig.loop.run_once(0.1)
    used = rig.h.queues[RX].used_elements()
    assert len(used) == 60                  # every posted buffer used, one frame each
    rig.post_rx(*[256] * 40)
    assert len(rig.h.queues[RX].used_elements()) == 40


# -- hot-replace and host failures ----------------------------------------------------------------


def test_attach_and_detach_tap_toggle_link_with_config_interrupts() -> None:
    """An empty slot reports link down; attaching a tap sets LINK_UP with a config-change
    interrupt and frames flow; detaching sets it down again."""
    r = Rig(tap=False)
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert struct.unpack("<H", r.h.read_config(6, 2))[0] == 0
        r.post_rx(2048)
        tap = FakeTap(ours)
        r.device.attach_tap(tap, bytes.fromhex("02aabbccddee"))
        assert r.h.transport.interrupt_status & c.INT_CONFIG
        assert struct.unpack("<H", r.h.read_config(6, 2))[0] == 1
        assert r.h.read_config(0, 6) == bytes.fromhex("02aabbccddee")
        assert tap.offload_calls, "offloads applied on attach"
        peer.send(bytes(VNET_HDR_LEN) + ether(b"hot"))
        r.loop.run_once(0.5)
        assert len(r.h.queues[RX].used_elements()) == 1
        r.h.transport.interrupt_status = 0
        assert r.device.detach_tap() is tap
        assert r.h.transport.interrupt_status & c.INT_CONFIG
        assert struct.unpack("<H", r.h.read_config(6, 2))[0] == 0
        assert not r.loop.watching(tap.fd)
    finally:
        r.close()
        ours.close()
        peer.close()


def test_a_tap_that_goes_away_sets_link_down_without_spinning() -> None:
    """The host side going away (EOF on read, EPIPE on write) stops tap reads and reports
    link down with a config interrupt, instead of waking the loop forever."""
    rig = Rig(kind=socket.SOCK_SEQPACKET)
    try:
        rig.post_rx(2048)
        assert rig.armed()
        rig.peer.close()
        rig.h.transport.interrupt_status = 0
        rig.loop.run_once(0.5)
        assert not rig.armed()
        assert struct.unpack("<H", rig.h.read_config(6, 2))[0] == 0
        assert rig.h.transport.interrupt_status & c.INT_CONFIG
        rig.send(bytes(VNET_HDR_LEN), ether(b"lost"))
        assert rig.device.counters["tx_dropped"] == 1
        assert rig.device.counters["errors"] == 1
    finally:
        rig.close()


def test_reset_forgets_buffers_and_stops_reading(rig: Rig) -> None:
    """A driver reset drops held buffers and unregisters the tap; re-init works again."""
    rig.post_rx(2048)
    assert rig.armed()
    rig.h.write_reg(c.STATUS, 0)
    assert not rig.armed()
    assert rig.h.start() & c.STATUS_DRIVER_OK
    addrs = rig.post_rx(2048)
    frame = ether(b"again")
    rig.host_sends(frame)
    assert rig.memory.read(addrs[0] + VNET_HDR_LEN, len(frame)) == frame


def test_close_closes_the_tap(rig: Rig) -> None:
    """close() releases the tap fd."""
    assert rig.tap is not None
    fd = rig.tap.fd
    rig.device.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_mergeable_rx_never_hands_readv_more_than_iov_max_buffers(rig: Rig) -> None:
    """Receive chains of 64 tiny buffers each: the device stops taking chains before the
    held buffers (plus its overflow buffer) pass the kernel's IOV_MAX, so readv works and
    the tap stays up; a frame arrives whole and the next frames keep coming."""
    iov_max = os.sysconf("SC_IOV_MAX")
    q = rig.h.queues[RX]
    chains = iov_max // 64 + 1
    for _ in range(chains):
        table = rig.h.alloc(16 * 64)
        q.add_indirect_chain(table, [Buffer(rig.h.alloc(16), 16, True) for _ in range(64)])
    rig.h.kick(RX)
    frame = ether(bytes(range(40)))
    rig.host_sends(frame)
    used = q.used_elements()
    assert sum(n for _h, n in used) == VNET_HDR_LEN + len(frame), used
    assert rig.device.counters["errors"] == 0
    assert struct.unpack("<H", rig.h.read_config(6, 2))[0] == 1, "link went down"
    rig.host_sends(ether(b"second"))
    assert q.used_elements(), "the tap stopped delivering"
