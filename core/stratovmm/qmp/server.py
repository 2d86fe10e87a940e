"""The QMP server: a unix socket on the main event loop, several clients at once.

Each connection gets the greeting at once (commands work right after it, as in
StratoVirt), then its bytes go through a ``JsonStreamSplitter`` and each value through
the ``Dispatcher``; replies and events are single ``\\r\\n``-terminated lines.

Nothing here blocks the main loop, and nothing a client does grows memory
without bound:

* sockets are non-blocking; unsent output waits in a per-client buffer that
  is written when epoll says the socket is writable;
* while more than ``OUTPUT_HIGH_WATER`` bytes are unsent the server stops
  reading that client's requests (requests already read wait, parsed, until
  the client reads), so a client that sends without reading throttles itself;
* events are never held back, so a client that stops reading altogether is
  disconnected once ``OUTPUT_LIMIT`` bytes pile up;
* input is bounded by the splitter (``MAX_MESSAGE_BYTES``, resync after an
  over-size message) and by one ``READ_CHUNK`` per wake-up;
* at most ``MAX_RECEIVED_FDS`` unclaimed SCM_RIGHTS fds per connection, at most
  ``MAX_CLIENTS`` connections.

A client that half-closes its socket (``socat``, ``ncat`` at end of input)
still gets the replies to what it sent, then the server closes.  On
``SHUTDOWN`` the event is flushed to every client (for up to
``SHUTDOWN_FLUSH_SECONDS``) before the socket is closed and its path removed,
because the process exits right after.
"""

from __future__ import annotations

import array
import collections
import logging
import select
import socket
import time

from stratovmm.host.eventloop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop
from stratovmm.host.unixsock import UnixListener
from stratovmm.qmp.commands import version_info
from stratovmm.qmp.dispatch import MAX_RECEIVED_FDS, Dispatcher, Session, encode_line
from stratovmm.qmp.events import Event, EventBus
from stratovmm.qmp.framing import Frame, JsonStreamSplitter

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
OUTPUT_HIGH_WATER = 64 * 1024
OUTPUT_LIMIT = 1024 * 1024
MAX_CLIENTS = 16
LISTEN_BACKLOG = 16
SHUTDOWN_FLUSH_SECONDS = 1.0
_FD_SIZE = array.array("i").itemsize
_CMSG_SPACE = socket.CMSG_SPACE(MAX_RECEIVED_FDS * _FD_SIZE)


def greeting() -> bytes:
    """The line a client reads on connect, as every StratoVirt binary sends it: the
    ``qemu`` version clients check (5.0.1), StratoVMM's own in ``package``."""
    return encode_line({"QMP": {"version": version_info(), "capabilities": []}})


class QmpClient:
    """One connection: its socket, input splitter, parsed-but-unhandled requests,
    unsent output and the fds it passed."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.splitter = JsonStreamSplitter()
        self.session = Session(name)
        self.pending: collections.deque[Frame] = collections.deque()
        self.out = bytearray()
        self.read_eof = False
        self.closed = False
        self.mask = EPOLLIN


class QmpServer:
    """Listens on ``path`` and serves QMP on ``loop`` (the main loop)."""

    def __init__(self, path: str, loop: EventLoop, dispatcher: Dispatcher) -> None:
        self.path = path
        self.loop = loop
        self.dispatcher = dispatcher
        self.clients: dict[int, QmpClient] = {}
        self._listener: UnixListener | None = None
        self._flush_epoll: select.epoll | None = None
        self._greeting = greeting()
        self._serial = 0

    # -- listening -----------------------------------------------------------------

    def start(self) -> None:
        """Listen (0600: QMP controls the VM; a stale socket left by a dead VMM is
        replaced, a live one refused)."""
        self._listener = UnixListener(self.path, self.loop, self._accept, "-api-channel",
                                      LISTEN_BACKLOG)
        self._flush_epoll = select.epoll()
        log.info("QMP listening on %s", self.path)

    def _accept(self, sock: socket.socket) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            log.warning("QMP: refusing a connection, %d clients already", MAX_CLIENTS)
            sock.close()
            return
        self._serial += 1
        client = QmpClient(sock, f"qmp-client-{self._serial}")
        self.clients[client.fd] = client
        self.loop.register(client.fd, EPOLLIN, lambda events: self._on_client(client, events))
        log.info("QMP %s connected", client.name)
        self._send(client, self._greeting)

    # -- one client --------------------------------------------------------------------

    def _on_client(self, client: QmpClient, events: int) -> None:
        if events & EPOLLOUT:
            self._write(client)
            self._process(client)
        if client.closed:
            return
        if events & EPOLLIN and not client.read_eof:
            self._read(client)
        elif events & (EPOLLHUP | EPOLLERR):
            self._write(client)
            if not client.closed and (client.read_eof or events & EPOLLERR):
                self._close_client(client, "hung up")

    def _read(self, client: QmpClient) -> None:
        try:
            data, ancdata, flags, _addr = client.sock.recvmsg(READ_CHUNK, _CMSG_SPACE,
                                                              socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_client(client, f"read failed: {exc}")
            return
        self._take_fds(client, ancdata, flags)
        if not data:
            client.read_eof = True
            self._process(client)
            return
        client.pending.extend(client.splitter.feed(data))
        self._process(client)

    def _take_fds(self, client: QmpClient, ancdata: list[tuple[int, int, bytes]],
                  flags: int) -> None:
        fds: list[int] = []
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(cdata[:len(cdata) - len(cdata) % _FD_SIZE])
                fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            log.warning("QMP %s: more than %d fds in one message; the rest were dropped",
                        client.name, MAX_RECEIVED_FDS)
        if fds:
            dropped = client.session.add_received_fds(fds)
            if dropped:
                log.warning("QMP %s: %d unclaimed fds already held; closed %d more",
                            client.name, MAX_RECEIVED_FDS, dropped)

    def _process(self, client: QmpClient) -> None:
        """Answer parsed requests while the client keeps up with its output."""
        while client.pending and not client.closed and len(client.out) < OUTPUT_HIGH_WATER:
            frame = client.pending.popleft()
            self._send(client, self.dispatcher.handle(frame, client.session))
        if client.closed:
            return
        if client.read_eof and not client.pending and not client.out:
            self._close_client(client, "closed by the client")
            return
        self._update_interest(client)

    def _send(self, client: QmpClient, line: bytes) -> None:
        if client.closed:
            return
        client.out += line
        if len(client.out) > OUTPUT_LIMIT:
            self._close_client(client, f"more than {OUTPUT_LIMIT} bytes unread")
            return
        self._write(client)

    def _write(self, client: QmpClient) -> None:
        while client.out and not client.closed:
            try:
                sent = client.sock.send(client.out, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._close_client(client, f"write failed: {exc}")
                return
            del client.out[:sent]
        if not client.closed:
            if client.read_eof and not client.pending and not client.out:
                self._close_client(client, "closed by the client")
                return
            self._update_interest(client)

    def _update_interest(self, client: QmpClient) -> None:
        mask = 0
        if not client.read_eof and not client.pending and len(client.out) < OUTPUT_HIGH_WATER:
            mask |= EPOLLIN
        if client.out:
            mask |= EPOLLOUT
        if mask != client.mask:
            client.mask = mask
            self.loop.modify(client.fd, mask)

    def _close_client(self, client: QmpClient, why: str) -> None:
        if client.closed:
            return
        client.closed = True
        log.info("QMP %s: %s", client.name, why)
        self.loop.unregister(client.fd)
        self.clients.pop(client.fd, None)
        client.pending.clear()
        client.session.close()
        client.sock.close()

    # -- events --------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """``EventBus`` subscriber: send ``event`` to every client (from any thread)."""
        if self.loop.in_loop_thread():
            self._broadcast(event)
        else:
            self.loop.call_soon(lambda: self._broadcast(event))

    def _broadcast(self, event: Event) -> None:
        line = encode_line(event.to_qmp())
        for client in list(self.clients.values()):
            self._send(client, line)
        if event.name == "SHUTDOWN":
            self.flush(SHUTDOWN_FLUSH_SECONDS)
            self.close()

    def flush(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds writing every client's unsent output.

        Waits on an epoll made in ``start``: the seccomp filter (applied after
        ``start``) allows epoll_ctl/epoll_wait but not epoll_create or poll.
        """
        if self._flush_epoll is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            waiting = [c for c in self.clients.values() if c.out]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return
            for client in waiting:
                self._flush_epoll.register(client.fd, select.EPOLLOUT)
            try:
                self._flush_epoll.poll(remaining)
            except InterruptedError:
                pass
            finally:
                for client in waiting:
                    self._flush_epoll.unregister(client.fd)
            for client in waiting:
                self._write(client)

    def close(self) -> None:
        """Disconnect every client, stop listening and remove the socket file."""
        for client in list(self.clients.values()):
            self._close_client(client, "server closing")
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        if self._flush_epoll is not None:
            self._flush_epoll.close()
            self._flush_epoll = None


def serve_qmp(path: str, loop: EventLoop, dispatcher: Dispatcher, events: EventBus
              ) -> QmpServer:
    """Listen on ``path`` (before the VM runs) and send every event of ``events``, the VM's
    bus, to the clients; its ``SHUTDOWN`` flushes them and closes the server."""
    server = QmpServer(path, loop, dispatcher)
    server.start()
    events.subscribe(server.publish)
    return server
