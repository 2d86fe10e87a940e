"""One bridged stream: a guest vsock (CID, port) ↔ a host unix socket.

The connection keeps the two counters of each direction that virtio 1.2
§5.10.6.3 (Buffer Space Management) defines, and the state of §5.10.6.5
(Stream Sockets):

guest → host
    ``buf_alloc`` is what we advertise; ``rx_cnt`` counts payload the guest
    sent, ``fwd_cnt`` what of it reached the host socket.  Bytes the host
    socket could not take yet wait in ``out``, which therefore never holds more
    than ``buf_alloc`` guest bytes: a guest that sends beyond its credit breaks
    the protocol and the connection is reset (as Linux does since 5.5).
host → guest
    ``tx_cnt`` counts payload we sent; the guest's ``buf_alloc``/``fwd_cnt`` from
    its last packet give ``peer_free``.  We read the host socket only into a
    guest rx buffer and never more than ``peer_free`` bytes, so nothing is
    buffered in this direction at all.

Control packets owed to the guest are flags (``need_request``, ...), not a
queue, so a guest that posts no rx buffers costs a bounded amount of memory.
The ``UnixBridge`` owns the epoll registration and the connection table; this
class does the per-stream work and never blocks (the socket is non-blocking).
"""

from __future__ import annotations

import enum
import socket

from stratovmm.api import (
    EPOLLIN,
    EPOLLOUT,
    GuestError,
    Timer,
    skip_views,
    trim_views,
)
from stratovmm_vsock.packet import (
    HOST_CID,
    MAX_PAYLOAD,
    OP_CREDIT_UPDATE,
    OP_REQUEST,
    OP_RESPONSE,
    OP_RW,
    OP_SHUTDOWN,
    SHUTDOWN_BOTH,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    TYPE_STREAM,
    U32_MASK,
    Header,
)

SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT


class State(enum.Enum):
    """Where a stream is in the handshake of §5.10.6.5."""

    LOCAL_INIT = "local-init"      # host side asked (CONNECT): REQUEST owed/sent, no RESPONSE yet
    ESTABLISHED = "established"    # RESPONSE exchanged: data may flow


class ProtocolViolation(GuestError):
    """The guest broke the stream protocol on this connection; it is reset (RST)."""


class Connection:
    """The state and both credit windows of one stream."""

    def __init__(self, sock: socket.socket, local_port: int, peer_port: int, guest_cid: int,
                 state: State, buf_alloc: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.local_port = local_port        # host-side port (what the guest addresses)
        self.peer_port = peer_port          # the guest's port
        self.guest_cid = guest_cid
        self.state = state
        self.buf_alloc = buf_alloc
        # guest → host (§5.10.6.3: "fwd_cnt is the free-running bytes received counter")
        self.rx_cnt = 0
        self.fwd_cnt = 0
        self.last_fwd_cnt_sent = 0
        self.out = bytearray()
        self.out_prefix = 0                 # leading bytes of ``out`` that are ours ("OK n\n")
        # host → guest
        self.tx_cnt = 0
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        # what we owe the guest
        self.need_request = False
        self.need_response = False
        self.need_credit_update = False
        self.shutdown_to_send = 0
        # host socket and shutdown state
        self.host_readable = False          # epoll said readable and we have not drained it
        self.host_eof = False               # the host sent EOF; SHUTDOWN(SEND) owed or sent
        self.host_write_shut = False        # we shut the socket for writing (guest said SEND)
        self.guest_shutdown = 0             # SHUTDOWN flags the guest sent (permanent, §5.10.6.5)
        self.registered_events = 0          # what the bridge registered with epoll (0: not)
        self.timer: Timer | None = None

    @property
    def key(self) -> tuple[int, int]:
        """(host port, guest port): the flow's address (§5.10.6.2; the CIDs are fixed)."""
        return (self.local_port, self.peer_port)

    # -- credit (§5.10.6.3) ------------------------------------------------------------------

    def update_peer_credit(self, header: Header) -> None:
        """Every packet of a stream carries the sender's buf_alloc and fwd_cnt."""
        self.peer_buf_alloc = header.buf_alloc
        self.peer_fwd_cnt = header.fwd_cnt

    def peer_free(self) -> int:
        """``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` in u32 arithmetic; a guest that claims
        to have consumed more than we sent gets no credit rather than a huge one."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32_MASK
        return max(0, self.peer_buf_alloc - in_flight)

    def guest_bytes_buffered(self) -> int:
        """Guest payload accepted but not yet written to the host socket."""
        return len(self.out) - self.out_prefix

    def credit_threshold(self) -> int:
        """Forwarded bytes after which we tell the guest (a quarter of the window)."""
        return max(1, self.buf_alloc // 4)

    # -- what the guest sent ---------------------------------------------------------------------

    def on_response(self) -> None:
        """The guest accepted our REQUEST: tell the host client ``OK <port>`` (Firecracker)."""
        if self.state is not State.LOCAL_INIT:
            raise ProtocolViolation("RESPONSE on an established connection (§5.10.6.5)")
        self.state = State.ESTABLISHED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        line = f"OK {self.local_port}\n".encode()
        self.out[:0] = line
        self.out_prefix += len(line)
        self.flush()

    def on_shutdown(self, flags: int) -> None:
        """SHUTDOWN hints are permanent (§5.10.6.5); SEND → shut the host socket for writing
        once everything the guest sent has been written."""
        self.guest_shutdown |= flags & SHUTDOWN_BOTH
        self.flush()

    def on_guest_data(self, views: list[memoryview], length: int) -> None:
        """An RW payload: straight from guest memory to the host socket, the rest kept in
        ``out`` (which the credit check bounds by ``buf_alloc``)."""
        if self.state is not State.ESTABLISHED:
            raise ProtocolViolation("RW before the connection is established (§5.10.6.5)")
        if self.guest_shutdown & SHUTDOWN_SEND:
            raise ProtocolViolation("RW after SHUTDOWN(SEND) (§5.10.6.5)")
        if self.guest_bytes_buffered() + length > self.buf_alloc:
            raise ProtocolViolation(
                f"RW of {length} bytes with {self.buf_alloc - self.guest_bytes_buffered()} bytes"
                " of credit (§5.10.6.3: data MUST only be sent when the peer has space)")
        if length == 0:
            return
        self.rx_cnt += length
        sent = 0
        if not self.out and not self.host_write_shut:
            try:
                sent = self.sock.sendmsg(views, [], SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            self.fwd_cnt += sent
        for view in skip_views(views, sent):
            self.out += view
        self._after_forward()

    def flush(self) -> None:
        """Write what waits for the host socket; ``OSError`` (EPIPE, ...) means the host is gone."""
        while self.out:
            try:
                n = self.sock.send(self.out, SEND_FLAGS)
            except BlockingIOError:
                break
            ours = min(n, self.out_prefix)
            self.out_prefix -= ours
            self.fwd_cnt += n - ours
            del self.out[:n]
        if not self.out and self.guest_shutdown & SHUTDOWN_SEND and not self.host_write_shut:
            self.host_write_shut = True
            self.sock.shutdown(socket.SHUT_WR)
        self._after_forward()

    def _after_forward(self) -> None:
        """Owe a CREDIT_UPDATE once the guest's idea of our free space is a quarter stale.

        Every packet we send carries ``fwd_cnt``, so traffic towards the guest refreshes it
        for free; this covers a guest that only sends (Linux waits for credit silently)."""
        if self.fwd_cnt - self.last_fwd_cnt_sent >= self.credit_threshold():
            self.need_credit_update = True

    # -- what we owe the guest -------------------------------------------------------------------

    def can_send_data(self) -> bool:
        """Host bytes may go to the guest now (established, not shut, credit left)."""
        return (self.state is State.ESTABLISHED and not self.host_eof
                and not self.guest_shutdown & SHUTDOWN_RCV and self.peer_free() > 0)

    def wants_rx(self) -> bool:
        """Something is owed to the guest on the rx queue."""
        return (self.need_request or self.need_response or bool(self.shutdown_to_send)
                or self.need_credit_update or (self.host_readable and self.can_send_data()))

    def wanted_events(self) -> int:
        """The epoll events worth waking for: readable only when the data could go somewhere
        (otherwise level-triggered epoll would spin), writable only with bytes waiting."""
        events = 0
        if self.can_send_data() and not self.host_readable:
            events |= EPOLLIN
        if self.out:
            events |= EPOLLOUT
        return events

    def finished(self) -> bool:
        """The guest said it will neither send nor receive and everything it sent was written:
        the clean disconnect ends with our RST (§5.10.6.5)."""
        return self.guest_shutdown == SHUTDOWN_BOTH and not self.out

    def header(self, op: int, length: int = 0, flags: int = 0) -> Header:
        """A packet from the host end of this stream, with our current credit."""
        self.last_fwd_cnt_sent = self.fwd_cnt
        self.need_credit_update = False
        return Header(HOST_CID, self.guest_cid, self.local_port, self.peer_port, length,
                      TYPE_STREAM, op, flags, self.buf_alloc, self.fwd_cnt)

    def next_packet(self, views: list[memoryview]) -> tuple[Header, int] | None:
        """The next packet owed to the guest, payload read into ``views``; (header, payload
        length), or None.  Order: handshake, data, SHUTDOWN (after the data it ends),
        CREDIT_UPDATE (only when nothing else carried the credit)."""
        if self.need_request:
            self.need_request = False
            return self.header(OP_REQUEST), 0
        if self.need_response:
            self.need_response = False
            return self.header(OP_RESPONSE), 0
        if self.host_readable and self.can_send_data():
            packet = self._read_host(views)
            if packet is not None:
                return packet
        if self.shutdown_to_send:
            flags, self.shutdown_to_send = self.shutdown_to_send, 0
            return self.header(OP_SHUTDOWN, flags=flags), 0
        if self.need_credit_update:
            return self.header(OP_CREDIT_UPDATE), 0
        return None

    def _read_host(self, views: list[memoryview]) -> tuple[Header, int] | None:
        room = min(sum(len(v) for v in views), self.peer_free(), MAX_PAYLOAD)
        if room <= 0:
            return None
        try:
            n = self.sock.recvmsg_into(trim_views(views, room))[0]
        except BlockingIOError:
            self.host_readable = False
            return None
        if n == 0:
            # The host will send no more: tell the guest (SHUTDOWN SEND); it may still send.
            self.host_readable = False
            self.host_eof = True
            self.shutdown_to_send |= SHUTDOWN_SEND
            return None
        self.tx_cnt = (self.tx_cnt + n) & U32_MASK
        return self.header(OP_RW, n), n

    def close(self) -> None:
        """Close the host socket and forget the timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.sock.close()

