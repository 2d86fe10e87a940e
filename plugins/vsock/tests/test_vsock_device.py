"""virtio-vsock (virtio 1.2 §5.10) through the real transport, no KVM: the stream state
machine, credit accounting and bad input, with a mock guest driver on the rx/tx queues and
real unix sockets on the host side."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stratovmm_vsock import backend as backend_mod
from stratovmm_vsock.backend import CONN_BUF_SIZE, LOCAL_PORT_FIRST, UnixBridge
from stratovmm_vsock.device import EVENT, RX, TX, VsockDevice
from stratovmm_vsock.packet import (
    F_STREAM,
    HEADER_SIZE,
    HOST_CID,
    OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_RW,
    OP_SHUTDOWN,
    SHUTDOWN_BOTH,
    SHUTDOWN_SEND,
    TYPE_SEQPACKET,
    TYPE_STREAM,
    Header,
)

from stratovmm.api import EventLoop
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

CID = 3
GUEST_PORT = 1234
RX_BUF = 4096           # what Linux 6.1 posts (VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE)


class MockDriver:
    """The guest side: posts rx buffers, sends packets on tx, reads what the device wrote."""

    def __init__(self, tmp_path: Path, **bridge_options: object) -> None:
        self.loop = EventLoop("vsock-test")
        self.path = str(tmp_path / "v.sock")
        self.bridge = UnixBridge(self.path, CID, self.loop, **bridge_options)  # type: ignore[arg-type]
        self.device = VsockDevice("v0", CID, self.bridge)
        self.h = DeviceHarness(self.device, memory_size=32 << 20, queue_size=128,
                               loop=self.loop)
        self.rx_addr: dict[int, int] = {}
        assert self.h.start() & 4     # DRIVER_OK

    @property
    def mem(self):  # type: ignore[no-untyped-def]
        return self.h.memory

    def post_rx(self, count: int = 8, size: int = RX_BUF) -> None:
        """Post ``count`` rx buffers laid out as Linux does: header, then payload (at most 32
        outstanding, so the mock's descriptor indices never wrap onto a pending chain)."""
        for _ in range(min(count, 32 - len(self.rx_addr))):
            addr = self.h.alloc(HEADER_SIZE + size)
            head = self.h.queues[RX].add_chain([Buffer(addr, HEADER_SIZE, True),
                                                Buffer(addr + HEADER_SIZE, size, True)])
            self.rx_addr[head] = addr
        self.h.kick(RX)

    def send(self, op: int, payload: bytes = b"", *, src_port: int = GUEST_PORT,
             dst_port: int = 5000, length: int | None = None, flags: int = 0,
             buf_alloc: int = 1 << 20, fwd_cnt: int = 0, type_: int = TYPE_STREAM,
             src_cid: int = CID, dst_cid: int = HOST_CID, header_len: int = HEADER_SIZE) -> None:
        """Put one packet on the tx queue and kick."""
        header = Header(src_cid, dst_cid, src_port, dst_port,
                        len(payload) if length is None else length, type_, op, flags, buf_alloc,
                        fwd_cnt).pack()[:header_len]
        addr = self.h.alloc(len(header) + len(payload))
        self.mem.write(addr, header + payload)
        buffers = [Buffer(addr, len(header))]
        if payload:
            buffers.append(Buffer(addr + len(header), len(payload)))
        self.h.queues[TX].add_chain(buffers)
        self.h.kick(TX)

    def received(self) -> list[tuple[Header, bytes]]:
        """Packets the device completed on rx since the last call."""
        out = []
        for head, length in self.h.queues[RX].used_elements():
            addr = self.rx_addr.pop(head)
            assert length >= HEADER_SIZE
            header = Header.unpack(self.mem.read(addr, HEADER_SIZE))
            payload = self.mem.read(addr + HEADER_SIZE, length - HEADER_SIZE)
            assert header.len == len(payload)
            out.append((header, payload))
        return out

    def settle(self, rounds: int = 5, timeout: float = 0.02) -> None:
        """Let the device loop serve host socket events."""
        for _ in range(rounds):
            self.loop.run_once(timeout)

    def listen(self, port: int) -> socket.socket:
        """A host service at ``PATH_port``."""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(f"{self.path}_{port}")
        server.listen(4)
        return server

    def guest_connect(self, port: int = 5000) -> tuple[socket.socket, Header]:
        """A guest-initiated stream to host ``port``: (host end, RESPONSE header)."""
        server = self.listen(port)
        self.post_rx()
        self.send(OP_REQUEST, dst_port=port)
        server.settimeout(2)
        host, _ = server.accept()
        server.close()
        host.settimeout(2)
        (response, _payload), = self.received()
        return host, response


def closed(sock: socket.socket) -> bool:
    """The peer closed ``sock`` (EOF, or a reset when it left our bytes unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def ops(packets: list[tuple[Header, bytes]]) -> list[int]:
    return [h.op for h, _ in packets]


@pytest.fixture
def drv(tmp_path: Path) -> Iterator[MockDriver]:
    """A started device whose bridge listens in ``tmp_path``."""
    d = MockDriver(tmp_path)
    yield d
    d.device.close()


# -- identity --------------------------------------------------------------------------------


def test_identity_config_and_features(drv: MockDriver) -> None:
    """Device id 19, three queues, le64 guest_cid in config space, VIRTIO_VSOCK_F_STREAM."""
    assert drv.h.read_reg(0x008) == 19
    assert len(drv.device.QUEUE_SIZES) == 3 and (RX, TX, EVENT) == (0, 1, 2)
    assert struct.unpack("<Q", drv.h.read_config(0, 8))[0] == CID
    assert drv.h.device_features() & (1 << F_STREAM)


# -- guest-initiated streams ---------------------------------------------------------------------


def test_guest_request_connects_to_path_port_and_gets_response(drv: MockDriver) -> None:
    """REQUEST to host port P connects to PATH_P; the RESPONSE mirrors the addresses and
    carries our buf_alloc (§5.10.6.3)."""
    host, resp = drv.guest_connect(5000)
    assert resp.op == OP_RESPONSE and resp.type == TYPE_STREAM
    assert (resp.src_cid, resp.src_port, resp.dst_cid, resp.dst_port) == (HOST_CID, 5000, CID,
                                                                          GUEST_PORT)
    assert resp.buf_alloc == CONN_BUF_SIZE and resp.fwd_cnt == 0
    assert drv.device.counters["connections"] == 1
    host.close()


def test_guest_request_without_listener_gets_rst(drv: MockDriver) -> None:
    """No PATH_P socket: the guest's REQUEST is answered with RST (§5.10.6.5)."""
    drv.post_rx()
    drv.send(OP_REQUEST, dst_port=5001)
    (rst, _), = drv.received()
    assert rst.op == OP_RST and (rst.src_port, rst.dst_port) == (5001, GUEST_PORT)
    assert drv.bridge.conns == {}


def test_data_flows_both_ways_with_counters(drv: MockDriver) -> None:
    """RW payload reaches the host socket; host bytes come back as RW with tx accounting."""
    host, _ = drv.guest_connect()
    drv.send(OP_RW, b"hello host")
    assert host.recv(100) == b"hello host"
    host.sendall(b"hello guest")
    drv.settle()
    (rw, payload), = drv.received()
    assert rw.op == OP_RW and payload == b"hello guest"
    assert rw.fwd_cnt == 10          # the 10 bytes we forwarded to the host
    conn = drv.bridge.conns[(5000, GUEST_PORT)]
    assert conn.tx_cnt == 11 and conn.rx_cnt == 10


def test_large_transfer_round_trip_checksums(drv: MockDriver) -> None:
    """256 KiB each way through the bridge arrive intact, each side within its credit."""
    host, _ = drv.guest_connect()
    host.setblocking(False)
    conn = drv.bridge.conns[(5000, GUEST_PORT)]
    data = os.urandom(256 * 1024)
    sent = 0
    got = bytearray()
    for _ in range(10_000):
        room = drv.bridge.buf_alloc - conn.guest_bytes_buffered()
        if sent < len(data) and room > 0:
            chunk = data[sent:sent + min(room, 32768)]
            drv.send(OP_RW, chunk)
            sent += len(chunk)
        try:
            got += host.recv(1 << 20)
        except BlockingIOError:
            pass
        drv.settle(1, 0)
        if len(got) == len(data):
            break
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    back = os.urandom(256 * 1024)
    out = 0
    received = bytearray()
    credit_limit = 1 << 20          # the REQUEST's buf_alloc, fwd_cnt 0
    done = False
    for _ in range(10_000):
        if out < len(back):
            try:
                out += host.send(back[out:out + 65536])
            except BlockingIOError:
                pass
            if out == len(back):
                host.shutdown(socket.SHUT_WR)
        drv.post_rx(16)
        drv.settle(1, 0)
        for header, payload in drv.received():
            assert header.op in (OP_RW, OP_CREDIT_UPDATE, OP_SHUTDOWN), header
            received += payload
            assert len(received) <= credit_limit        # §5.10.6.3
            done |= header.op == OP_SHUTDOWN
        drv.send(OP_CREDIT_UPDATE, fwd_cnt=len(received), buf_alloc=64 * 1024)
        credit_limit = len(received) + 64 * 1024
        if done:
            break
    assert hashlib.sha256(received).digest() == hashlib.sha256(back).digest()


# -- host-initiated streams (CONNECT) -------------------------------------------------------------


def host_connect(drv: MockDriver, port: int, line: bytes | None = None) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(drv.path)
    client.sendall(line if line is not None else f"CONNECT {port}\n".encode())
    client.settimeout(2)
    drv.settle()
    return client


def test_host_connect_sends_request_and_ok_after_response(drv: MockDriver) -> None:
    """CONNECT <port> → REQUEST to that guest port from a host port >= 2^30; the guest's
    RESPONSE → ``OK <hostport>`` on the unix socket, then bytes flow."""
    drv.post_rx()
    client = host_connect(drv, 52)
    (req, _), = drv.received()
    assert req.op == OP_REQUEST and req.dst_port == 52 and req.src_port >= LOCAL_PORT_FIRST
    assert (req.src_cid, req.dst_cid) == (HOST_CID, CID)
    drv.send(OP_RESPONSE, src_port=52, dst_port=req.src_port)
    assert client.recv(100) == f"OK {req.src_port}\n".encode()
    drv.send(OP_RW, b"ping", src_port=52, dst_port=req.src_port)
    assert client.recv(100) == b"ping"
    client.sendall(b"pong")
    drv.settle()
    (rw, payload), = drv.received()
    assert payload == b"pong" and rw.fwd_cnt == 4   # "OK ..." is not guest data


def test_host_connect_refused_by_guest_closes_without_ok(drv: MockDriver) -> None:
    """A guest RST in answer to the REQUEST closes the host socket with no OK line."""
    drv.post_rx()
    client = host_connect(drv, 53)
    (req, _), = drv.received()
    drv.send(OP_RST, src_port=53, dst_port=req.src_port)
    assert client.recv(100) == b""
    assert drv.bridge.conns == {}


def test_host_connect_times_out_when_guest_is_silent(tmp_path: Path) -> None:
    """No RESPONSE within the timeout: host socket closed, RST sent to the guest."""
    drv = MockDriver(tmp_path, connect_timeout=0.5)
    drv.post_rx()
    client = host_connect(drv, 54)
    (req, _), = drv.received()
    assert drv.received() == []
    drv.settle(12, 0.05)
    assert client.recv(100) == b""
    (rst, _), = drv.received()
    assert rst.op == OP_RST and rst.src_port == req.src_port
    drv.device.close()


def test_silent_host_client_is_dropped_after_the_handshake_timeout(tmp_path: Path) -> None:
    """A host socket that never completes its CONNECT line is closed after the handshake
    timeout and its slot freed: with one slot, a real client gets in afterwards."""
    drv = MockDriver(tmp_path, handshake_timeout=0.2, max_connections=1)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(drv.path)
    silent.sendall(b"CONN")                         # half a line, then nothing
    silent.settimeout(2)
    drv.settle()
    assert len(drv.bridge.clients) == 1
    deadline = time.monotonic() + 5
    while drv.bridge.clients and time.monotonic() < deadline:
        drv.settle(1, 0.05)
    assert drv.bridge.clients == {}
    assert silent.recv(10) == b""
    drv.post_rx()
    client = host_connect(drv, 55)
    (req, _), = drv.received()
    assert req.op == OP_REQUEST and req.dst_port == 55
    client.close()
    silent.close()
    drv.device.close()


@pytest.mark.parametrize("line", [b"CONNECT\n", b"CONNECT x\n", b"HELLO 5\n",
                                  b"CONNECT 99999999999\n", b"C" * 40])
def test_bad_connect_line_is_dropped(drv: MockDriver, line: bytes) -> None:
    """A malformed or overlong CONNECT line closes that host socket; the guest sees nothing."""
    drv.post_rx()
    client = host_connect(drv, 0, line)
    assert closed(client)
    assert drv.received() == [] and drv.bridge.clients == {}


def test_connection_limit_refuses_extra_host_sockets(tmp_path: Path) -> None:
    """Beyond max_connections an accepted host socket is closed at once (bounded fds)."""
    drv = MockDriver(tmp_path, max_connections=2)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for c in clients:
        c.connect(drv.path)
        c.settimeout(2)
    drv.settle()
    assert len(drv.bridge.clients) == 2
    assert drv.device.counters["refused"] == 1
    assert clients[2].recv(10) == b""
    drv.device.close()


# -- credit (§5.10.6.3) ---------------------------------------------------------------------------


def test_host_data_limited_by_guest_credit(drv: MockDriver) -> None:
    """We never send more than peer_buf_alloc - (tx_cnt - peer_fwd_cnt); a CREDIT_UPDATE
    from the guest releases the rest."""
    server = drv.listen(5000)
    drv.post_rx(16)
    drv.send(OP_REQUEST, buf_alloc=100)
    host, _ = server.accept()
    drv.received()
    host.sendall(b"x" * 300)
    drv.settle()
    first = drv.received()
    assert sum(len(p) for _, p in first) == 100
    drv.settle()
    assert drv.received() == []                   # out of credit: nothing more
    drv.send(OP_CREDIT_UPDATE, buf_alloc=100, fwd_cnt=100)
    drv.settle()
    assert sum(len(p) for _, p in drv.received()) == 100


def test_peer_fwd_cnt_wraps_modulo_2_32(drv: MockDriver) -> None:
    """Credit is computed in u32 arithmetic, so counters may wrap."""
    _host, _ = drv.guest_connect()   # keep the host end open
    conn = drv.bridge.conns[(5000, GUEST_PORT)]
    conn.tx_cnt = 5
    conn.peer_fwd_cnt = 0xFFFF_FFF0        # 21 bytes in flight across the wrap
    conn.peer_buf_alloc = 100
    assert conn.peer_free() == 79
    conn.peer_fwd_cnt = 10                 # claims more consumed than sent: no credit
    assert conn.peer_free() == 0


def test_credit_request_is_answered_with_credit_update(drv: MockDriver) -> None:
    """CREDIT_REQUEST → CREDIT_UPDATE with our buf_alloc and fwd_cnt."""
    _host, _ = drv.guest_connect()   # keep the host end open
    drv.send(OP_RW, b"abc")
    drv.send(OP_CREDIT_REQUEST)
    (upd, _), = drv.received()
    assert upd.op == OP_CREDIT_UPDATE and upd.buf_alloc == CONN_BUF_SIZE and upd.fwd_cnt == 3


def test_guest_over_credit_is_reset_and_counted(tmp_path: Path) -> None:
    """Sending beyond buf_alloc while the host is not reading breaks §5.10.6.3: RST, counted;
    the buffered bytes never exceed buf_alloc."""
    drv = MockDriver(tmp_path, buf_alloc=8192)
    _host, _ = drv.guest_connect()   # keep the host end open
    conn = drv.bridge.conns[(5000, GUEST_PORT)]
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = 0
    while (5000, GUEST_PORT) in drv.bridge.conns and sent < 4 << 20:
        assert conn.guest_bytes_buffered() <= 8192
        drv.send(OP_RW, b"z" * 4096)
        sent += 4096
    assert (5000, GUEST_PORT) not in drv.bridge.conns
    assert drv.device.counters["guest_faults"] == 1
    assert ops(drv.received())[-1] == OP_RST
    drv.device.close()


def test_credit_update_sent_after_forwarding_a_quarter_window(drv: MockDriver) -> None:
    """A guest that only sends learns our fwd_cnt once buf_alloc/4 bytes were forwarded."""
    host, _ = drv.guest_connect()
    quarter = CONN_BUF_SIZE // 4
    drv.send(OP_RW, b"a" * (quarter - 1))
    assert drv.received() == []
    drv.send(OP_RW, b"b")
    (upd, _), = drv.received()
    assert upd.op == OP_CREDIT_UPDATE and upd.fwd_cnt == quarter
    host.close()


def test_buffered_data_flushes_when_host_reads(tmp_path: Path) -> None:
    """Bytes the host socket could not take wait (EPOLLOUT) and are written when it drains;
    fwd_cnt follows what was written."""
    drv = MockDriver(tmp_path, buf_alloc=64 * 1024)
    host, _ = drv.guest_connect()
    conn = drv.bridge.conns[(5000, GUEST_PORT)]
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = os.urandom(48 * 1024)
    drv.send(OP_RW, data[:32768])
    drv.send(OP_RW, data[32768:])
    assert conn.guest_bytes_buffered() > 0
    got = bytearray()
    while len(got) < len(data):
        got += host.recv(65536)
        drv.settle(1, 0.01)
    assert bytes(got) == data and conn.fwd_cnt == len(data)
    drv.device.close()


def idle(drv: MockDriver, seconds: float = 0.2) -> bool:
    """The device loop slept through ``seconds``: no fd was ready (no busy polling)."""
    start = time.monotonic()
    drv.loop.run_once(seconds)
    return time.monotonic() - start >= seconds * 0.9


def test_loop_idles_while_the_guest_cannot_take_data(drv: MockDriver) -> None:
    """Readable host data with no guest credit, or no rx buffers, or a host that hung up,
    leaves the socket out of epoll: level-triggered readiness must not spin the loop."""
    server = drv.listen(5000)
    drv.post_rx(1)
    drv.send(OP_REQUEST, buf_alloc=10)
    host, _ = server.accept()
    drv.received()
    host.sendall(b"y" * 100)
    drv.settle()
    assert sum(len(p) for _, p in drv.received()) == 0      # no rx buffer left
    assert idle(drv)
    drv.post_rx(4)
    assert sum(len(p) for _, p in drv.received()) == 10     # credit for 10 bytes only
    host.close()                                           # EPOLLHUP pending from now on
    assert idle(drv)
    drv.send(OP_CREDIT_UPDATE, buf_alloc=1000, fwd_cnt=10)
    drv.settle()
    packets = drv.received()
    assert sum(len(p) for _, p in packets) == 90 and ops(packets)[-1] == OP_SHUTDOWN


# -- shutdown and reset -----------------------------------------------------------------------


def test_guest_shutdown_send_then_both_ends_with_rst(drv: MockDriver) -> None:
    """SHUTDOWN(SEND) → EOF on the host socket; SHUTDOWN(RCV|SEND) → our RST, stream gone."""
    host, _ = drv.guest_connect()
    drv.send(OP_RW, b"last words")
    drv.send(OP_SHUTDOWN, flags=SHUTDOWN_SEND)
    assert host.recv(100) == b"last words" and host.recv(100) == b""
    drv.send(OP_SHUTDOWN, flags=SHUTDOWN_BOTH)
    assert ops(drv.received()) == [OP_RST]
    assert drv.bridge.conns == {}


def test_host_eof_becomes_shutdown_send_after_the_data(drv: MockDriver) -> None:
    """The host's EOF reaches the guest as SHUTDOWN(SEND), after all its bytes."""
    host, _ = drv.guest_connect()
    host.sendall(b"bye")
    host.shutdown(socket.SHUT_WR)
    drv.settle()
    packets = drv.received()
    assert ops(packets) == [OP_RW, OP_SHUTDOWN]
    assert packets[0][1] == b"bye" and packets[1][0].flags == SHUTDOWN_SEND
    drv.send(OP_RW, b"reply")              # the guest may still send
    assert host.recv(100) == b"reply"


def test_host_close_while_guest_sends_resets(drv: MockDriver) -> None:
    """A host socket that is gone (EPIPE) resets the stream towards the guest."""
    host, _ = drv.guest_connect()
    host.close()
    drv.settle()
    drv.received()
    drv.send(OP_RW, b"anyone?")
    drv.settle()
    assert OP_RST in ops(drv.received())
    assert drv.bridge.conns == {}


def test_guest_rst_closes_host_socket(drv: MockDriver) -> None:
    """RST from the guest closes the host end; no reply."""
    host, _ = drv.guest_connect()
    drv.send(OP_RST)
    assert host.recv(10) == b""
    assert drv.received() == [] and drv.bridge.conns == {}


def test_device_reset_drops_every_stream(drv: MockDriver) -> None:
    """A driver reset closes all host sockets; the listener stays."""
    host, _ = drv.guest_connect()
    drv.h.write_reg(0x070, 0)
    assert host.recv(10) == b""
    assert drv.bridge.conns == {} and os.path.exists(drv.path)


# -- hostile guest --------------------------------------------------------------------------------


def test_packets_for_unknown_streams_get_rst(drv: MockDriver) -> None:
    """RW/SHUTDOWN/CREDIT_* on no stream → RST; an RST on no stream → nothing (no loops)."""
    drv.post_rx()
    for op in (OP_RW, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST, OP_RESPONSE):
        drv.send(op, b"x" if op == OP_RW else b"", dst_port=7777)
    drv.send(OP_RST, dst_port=7777)
    assert ops(drv.received()) == [OP_RST] * 5
    assert drv.device.counters["guest_faults"] == 0


def test_unknown_type_and_foreign_cid_get_rst(drv: MockDriver) -> None:
    """§5.10.6.4: a packet of unknown type is answered with RST; so is a packet to a CID
    other than the host's (nothing else is reachable)."""
    drv.post_rx()
    drv.send(OP_REQUEST, type_=TYPE_SEQPACKET)
    drv.send(OP_REQUEST, dst_cid=7)
    assert ops(drv.received()) == [OP_RST, OP_RST]


@pytest.mark.parametrize(("kwargs", "what"), [
    ({"header_len": 20}, "short header"),
    ({"length": 100}, "len beyond the buffer"),
    ({"length": 70000, "payload": b"q" * 70000}, "len above 64 KiB"),
    ({"src_cid": 99}, "spoofed source CID"),
    ({"src_cid": CID | (1 << 40)}, "reserved upper CID bits"),
    ({"op": 9}, "unknown op"),
    ({"op": 0}, "OP_INVALID"),
])
def test_malformed_headers_are_dropped_and_counted(drv: MockDriver, kwargs: dict[str, object],
                                                   what: str) -> None:
    """Malformed tx headers are dropped and counted; an open stream keeps working."""
    host, _ = drv.guest_connect()
    kwargs = dict(kwargs)
    op = kwargs.pop("op", OP_RW)
    drv.send(op, **kwargs)  # type: ignore[arg-type]
    assert drv.device.counters["guest_faults"] == 1, what
    assert drv.received() == []
    drv.send(OP_RW, b"still fine")
    assert host.recv(100) == b"still fine"


def test_protocol_violations_reset_the_stream(drv: MockDriver) -> None:
    """A second REQUEST or a RESPONSE on an open stream breaks §5.10.6.5: RST, counted."""
    host, _ = drv.guest_connect()
    drv.send(OP_RESPONSE)
    assert ops(drv.received()) == [OP_RST]
    assert host.recv(10) == b"" and drv.device.counters["guest_faults"] == 1


def test_bad_rx_buffers_are_refused(drv: MockDriver) -> None:
    """rx buffers must be write-only and hold more than a header (§5.10.6.4)."""
    addr = drv.h.alloc(64)
    drv.h.queues[RX].add_chain([Buffer(addr, 44, True)])
    drv.h.queues[RX].add_chain([Buffer(addr, 8), Buffer(addr + 8, 56, True)])
    drv.h.kick(RX)
    drv.send(OP_RW, b"x", dst_port=7777)          # something to deliver
    assert drv.h.queues[RX].used_elements() == [(0, 0), (1, 0)]
    assert drv.device.counters["guest_faults"] == 2


def test_rst_backlog_pauses_tx_until_rx_drains(drv: MockDriver, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """§5.10.6.1: with no rx buffers, replies pile up only to a bound; tx then waits and
    resumes once the guest posts rx buffers; nothing is lost."""
    monkeypatch.setattr(backend_mod, "MAX_PENDING_RST", 8)
    for n in range(20):
        drv.send(OP_RW, b"x", src_port=2000 + n, dst_port=7777)
    assert len(drv.h.queues[TX].used_elements()) == 8
    answered = []
    for _ in range(6):
        drv.post_rx(8)
        answered += drv.received()
    assert sorted(h.dst_port for h, _ in answered) == list(range(2000, 2020))
    assert len(drv.h.queues[TX].used_elements()) == 12


def test_chain_errors_on_tx_are_counted(drv: MockDriver) -> None:
    """A descriptor outside guest RAM is refused by the chain walker and counted."""
    drv.h.queues[TX].write_descriptor(0, 1 << 40, 44, 0)
    drv.h.queues[TX].publish(0)
    drv.h.kick(TX)
    assert drv.device.counters["guest_faults"] == 1
