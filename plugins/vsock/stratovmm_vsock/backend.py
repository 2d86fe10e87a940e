"""The userspace backend: guest vsock streams bridged to host unix sockets, the way
Firecracker's "hybrid vsock" does it.

* host → guest: a host process connects to the listening socket ``PATH`` and
  writes ``CONNECT <port>\\n``; the bridge sends the guest a REQUEST for guest
  port ``<port>``, and when the guest answers RESPONSE writes ``OK <hostport>\\n``
  (``hostport`` is the host-side port the guest sees) and the stream is bridged.
  A guest RST (nothing listens there) or no answer within ``CONNECT_TIMEOUT``
  closes the host socket without an ``OK``; so does a host socket that has not
  sent its whole ``CONNECT`` line within ``HANDSHAKE_TIMEOUT``, so that idle
  sockets cannot hold the ``MAX_CONNECTIONS`` slots for ever.
* guest → host: a guest connecting to CID 2 port ``P`` makes the bridge connect
  to the unix socket ``PATH_P``; success is a RESPONSE, failure (no such socket,
  nobody listening, its backlog full) an RST.

Everything runs on the device's event loop: the listener (the core's
``UnixListener``: 0600, a stale socket replaced, a live one refused), the sockets waiting
for their ``CONNECT`` line and the bridged sockets are non-blocking and
registered with epoll only for the events that can make progress.  Resources
are bounded: at most ``MAX_CONNECTIONS`` host sockets, ``buf_alloc`` buffered
bytes per stream, ``MAX_PENDING_RST`` RSTs waiting for rx buffers (beyond that
the device stops reading the tx queue, virtio 1.2 §5.10.6.1).
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from stratovmm.api import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EventLoop,
    Timer,
    UnixListener,
)
from stratovmm_vsock.connection import Connection, ProtocolViolation, State
from stratovmm_vsock.packet import (
    HOST_CID,
    OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RST,
    OP_RW,
    OP_SHUTDOWN,
    TYPE_STREAM,
    Header,
    reply_rst,
)

log = logging.getLogger(__name__)

CONN_BUF_SIZE = 128 * 1024          # buf_alloc we advertise per stream
MAX_CONNECTIONS = 128               # host sockets (bridged + waiting for CONNECT)
MAX_PENDING_RST = 64
CONNECT_TIMEOUT = 5.0               # seconds the guest has to answer a REQUEST
# Seconds a host socket has to send its whole CONNECT line.  Firecracker's muxer gives it
# no time at all: it reads the line on the socket's first EPOLLIN and drops the socket if
# the line is not all there (unix/muxer.rs, read_local_stream_port), and it has no timer for
# sockets that never send.  We allow a line split across writes, for as long as we give the
# guest to answer (Firecracker: 2 s, csm CONN_REQUEST_TIMEOUT_MS), then close the socket.
HANDSHAKE_TIMEOUT = 5.0
MAX_CONNECT_LINE = 32               # "CONNECT 4294967295\n" is 19 bytes
LOCAL_PORT_FIRST = 1 << 30          # host ports of host-initiated streams, as Firecracker
LOCAL_PORT_LAST = (1 << 31) - 1


class DeviceSide(Protocol):
    """What the bridge needs from the virtio device."""

    active: bool
    counters: collections.Counter[str]

    def pump_rx(self) -> None: ...
    def guest_fault(self, kind: str, message: str, count: int = 1) -> None: ...


class HostClient:
    """An accepted host socket that has not sent its ``CONNECT <port>\\n`` line yet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.line = bytearray()
        self.timer: Timer | None = None     # HANDSHAKE_TIMEOUT

    def read_line(self) -> bytes | None:
        """The line once complete (None: not yet).  Read a byte at a time so no stream data
        after the line is consumed; ``ValueError`` for a line too long, ``EOFError`` on EOF."""
        while True:
            try:
                byte = self.sock.recv(1)
            except BlockingIOError:
                return None
            if not byte:
                raise EOFError("closed before CONNECT")
            self.line += byte
            if byte == b"\n":
                return bytes(self.line)
            if len(self.line) >= MAX_CONNECT_LINE:
                raise ValueError("CONNECT line too long")


def parse_connect(line: bytes) -> int:
    """The port of ``CONNECT <port>\\n`` (decimal, < 2^32); ``ValueError`` otherwise."""
    text = line.decode("ascii").rstrip("\n").rstrip("\r")
    verb, _, port = text.partition(" ")
    if verb != "CONNECT" or not port.isdigit() or int(port) > 0xFFFF_FFFF:
        raise ValueError(f"expected 'CONNECT <port>', got {text[:MAX_CONNECT_LINE]!r}")
    return int(port)


class UnixBridge:
    """Connection table, host sockets and the queue of what is owed to the guest."""

    def __init__(self, path: str, guest_cid: int, loop: EventLoop,
                 buf_alloc: int = CONN_BUF_SIZE, max_connections: int = MAX_CONNECTIONS,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 where: str = "-device vsock uds-path") -> None:
        """Listens at ``path`` (``ConfigError`` naming ``where`` if it cannot)."""
        self.path = path
        self.guest_cid = guest_cid
        self.loop = loop
        self.buf_alloc = buf_alloc
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.conns: dict[tuple[int, int], Connection] = {}
        self.clients: dict[int, HostClient] = {}
        self._rxq: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
        self._rst: collections.deque[Header] = collections.deque()
        self._local_ports: set[int] = set()
        self._next_port = LOCAL_PORT_FIRST
        self._device: DeviceSide | None = None
        self.listener = UnixListener(path, loop, self._on_accept, where, backlog=64)

    def attach(self, device: DeviceSide) -> None:
        """The device this bridge feeds."""
        self._device = device

    @property
    def device(self) -> DeviceSide:
        """The attached device."""
        assert self._device is not None, "UnixBridge.attach() was not called"
        return self._device

    # -- what the device asks ---------------------------------------------------------------

    def has_rx(self) -> bool:
        """Something may be owed to the guest."""
        return bool(self._rst or self._rxq)

    def rst_backlog_full(self) -> bool:
        """Too many RSTs wait for rx buffers: stop reading tx (§5.10.6.1)."""
        return len(self._rst) >= MAX_PENDING_RST

    def next_rx_packet(self, views: list[memoryview]) -> tuple[Header, int] | None:
        """The next packet for the guest with its payload read into ``views``; round robin
        over the streams that owe something, each visited at most once per call."""
        if self._rst:
            return self._rst.popleft(), 0
        for _ in range(len(self._rxq)):
            key, _none = self._rxq.popitem(last=False)
            conn = self.conns.get(key)
            if conn is None:
                continue
            try:
                packet = conn.next_packet(views)
            except OSError as exc:
                log.debug("vsock %s: host socket failed: %s", key, exc)
                self.kill(conn, rst=True)
                return self._rst.popleft(), 0
            self._refresh(conn)
            if packet is not None:
                return packet
        return None

    def on_guest_packet(self, header: Header, payload: list[memoryview]) -> None:
        """One packet from the tx queue (header already checked by the device)."""
        if header.type != TYPE_STREAM or header.dst_cid != HOST_CID:
            # §5.10.6.4: RST for an unknown type; nothing but the host is reachable here.
            if header.op != OP_RST:
                self.queue_rst(reply_rst(header))
            return
        key = (header.dst_port, header.src_port)
        conn = self.conns.get(key)
        if conn is None:
            if header.op == OP_REQUEST:
                self._guest_connect(header)
            elif header.op != OP_RST:
                self.device.counters["unknown_stream"] += 1
                self.queue_rst(reply_rst(header))       # §5.10.6.5: no such stream
            return
        conn.update_peer_credit(header)
        try:
            self._dispatch(conn, header, payload)
        except ProtocolViolation as exc:
            self.device.guest_fault("stream", f"{header.describe()}: {exc}")
            self.kill(conn, rst=True)
            return
        except OSError as exc:
            log.debug("vsock %s: host socket failed: %s", key, exc)
            self.kill(conn, rst=True)
            return
        if conn.key not in self.conns:
            return
        if conn.finished():
            self.kill(conn, rst=True)
        else:
            self._refresh(conn)

    def _dispatch(self, conn: Connection, header: Header, payload: list[memoryview]) -> None:
        op = header.op
        if op == OP_RW:
            conn.on_guest_data(payload, header.len)
        elif op == OP_CREDIT_UPDATE:
            pass                                        # the credit was read above
        elif op == OP_CREDIT_REQUEST:
            conn.need_credit_update = True
        elif op == OP_SHUTDOWN:
            conn.on_shutdown(header.flags)
        elif op == OP_RESPONSE:
            conn.on_response()
        elif op == OP_RST:
            self.kill(conn, rst=False)
        elif op == OP_REQUEST:
            raise ProtocolViolation("REQUEST for a stream that exists (§5.10.6.5)")

    # -- connections -----------------------------------------------------------------------------

    def _guest_connect(self, header: Header) -> None:
        """REQUEST to host port P: connect to ``PATH_P`` (RESPONSE) or refuse (RST)."""
        if len(self.conns) + len(self.clients) >= self.max_connections:
            self.device.counters["refused"] += 1
            self.queue_rst(reply_rst(header))
            return
        target = f"{self.path}_{header.dst_port}"
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(target)
        except OSError as exc:      # ENOENT, ECONNREFUSED, EAGAIN (backlog full)
            sock.close()
            log.debug("vsock: guest port %d -> %s refused: %s", header.src_port, target, exc)
            self.device.counters["refused"] += 1
            self.queue_rst(reply_rst(header))
            return
        conn = Connection(sock, header.dst_port, header.src_port, self.guest_cid,
                          State.ESTABLISHED, self.buf_alloc)
        conn.update_peer_credit(header)
        conn.need_response = True
        self._add(conn)

    def _host_connect(self, client: HostClient, port: int) -> None:
        """``CONNECT <port>`` from a host client: REQUEST to the guest, answer awaited."""
        local = self._alloc_port()
        conn = Connection(client.sock, local, port, self.guest_cid, State.LOCAL_INIT,
                          self.buf_alloc)
        conn.need_request = True
        key = conn.key
        conn.timer = self.loop.call_later(self.connect_timeout, lambda: self._timed_out(key))
        self._local_ports.add(local)
        self._add(conn)

    def _add(self, conn: Connection) -> None:
        self.conns[conn.key] = conn
        self.device.counters["connections"] += 1
        self._refresh(conn)

    def _alloc_port(self) -> int:
        """A host-side port no host-initiated stream uses (at most MAX_CONNECTIONS are)."""
        while True:
            port = self._next_port
            self._next_port = port + 1 if port < LOCAL_PORT_LAST else LOCAL_PORT_FIRST
            if port not in self._local_ports:
                return port

    def _timed_out(self, key: tuple[int, int]) -> None:
        conn = self.conns.get(key)
        if conn is not None and conn.state is State.LOCAL_INIT:
            conn.timer = None
            log.debug("vsock %s: guest did not answer the REQUEST", key)
            self.kill(conn, rst=True)
            self.device.pump_rx()

    def kill(self, conn: Connection, rst: bool) -> None:
        """Forget a stream and close its host socket; with ``rst`` tell the guest."""
        if self.conns.pop(conn.key, None) is None:
            return
        self._rxq.pop(conn.key, None)
        self._local_ports.discard(conn.local_port)
        if conn.registered_events:
            self.loop.unregister(conn.fd)
            conn.registered_events = 0
        conn.close()
        if rst:
            self.queue_rst(conn.header(OP_RST))

    def queue_rst(self, header: Header) -> None:
        """An RST for the rx queue (bounded: see ``rst_backlog_full``)."""
        self._rst.append(header)
        self.device.counters["rst_sent"] += 1

    def _refresh(self, conn: Connection) -> None:
        """Epoll interest and the rx queue entry follow the connection's state."""
        wanted = conn.wanted_events()
        if wanted != conn.registered_events:
            if not wanted:
                self.loop.unregister(conn.fd)
            elif conn.registered_events:
                self.loop.modify(conn.fd, wanted)
            else:
                self.loop.register(conn.fd, wanted, self._conn_handler(conn))
            conn.registered_events = wanted
        if conn.wants_rx():
            self._rxq[conn.key] = None

    def _conn_handler(self, conn: Connection) -> Callable[[int], None]:
        def handler(events: int) -> None:
            self._on_conn_event(conn, events)
        return handler

    # -- host-side events (device loop) ----------------------------------------------------------

    def _on_conn_event(self, conn: Connection, events: int) -> None:
        if conn.key not in self.conns:
            return
        try:
            if conn.out and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                conn.flush()
            if events & (EPOLLIN | EPOLLERR | EPOLLHUP) and conn.can_send_data():
                conn.host_readable = True
        except OSError as exc:
            log.debug("vsock %s: host socket failed: %s", conn.key, exc)
            self.kill(conn, rst=True)
        else:
            if conn.finished():
                self.kill(conn, rst=True)
            else:
                self._refresh(conn)
        self.device.pump_rx()

    def _on_accept(self, sock: socket.socket) -> None:
        if len(self.conns) + len(self.clients) >= self.max_connections:
            log.warning("vsock: %d host connections already, refusing one",
                        self.max_connections)
            self.device.counters["refused"] += 1
            sock.close()
            return
        client = HostClient(sock)
        fd = sock.fileno()
        self.clients[fd] = client
        self.loop.register(fd, EPOLLIN, self._client_handler(fd))
        client.timer = self.loop.call_later(self.handshake_timeout,
                                            self._handshake_expired(fd, client))

    def _client_handler(self, fd: int) -> Callable[[int], None]:
        def handler(_events: int) -> None:
            self._on_client(fd)
        return handler

    def _on_client(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            line = client.read_line()
            if line is None:
                return
            port = parse_connect(line)
        except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
            log.info("vsock: host client on %s dropped: %s", self.path, exc)
            self._drop_client(fd, close=True)
            return
        self._drop_client(fd, close=False)
        if not self.device.active:
            log.info("vsock: CONNECT %d before the guest driver is ready: refused", port)
            self.device.counters["refused"] += 1
            client.sock.close()
            return
        self._host_connect(client, port)
        self.device.pump_rx()

    def _handshake_expired(self, fd: int, client: HostClient) -> Callable[[], None]:
        def expired() -> None:
            if self.clients.get(fd) is client:
                log.info("vsock: host client on %s dropped: no CONNECT line within %.0f s",
                         self.path, self.handshake_timeout)
                self._drop_client(fd, close=True)
        return expired

    def _drop_client(self, fd: int, close: bool) -> None:
        client = self.clients.pop(fd)
        self.loop.unregister(fd)
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        if close:
            client.sock.close()

    # -- lifecycle -----------------------------------------------------------------------------

    def reset(self) -> None:
        """The driver reset the device: every stream is gone (no RST: the queues are)."""
        for conn in list(self.conns.values()):
            self.kill(conn, rst=False)
        self._rxq.clear()
        self._rst.clear()

    def close(self) -> None:
        """The VM ends: close every socket and remove ``PATH`` (if it is still ours)."""
        self.reset()
        for fd in list(self.clients):
            self._drop_client(fd, close=True)
        self.listener.close()
