"""The host side of a console: a unix socket server with one client and a bounded
output buffer.

Policy (StratoVirt v0.3's where it has one, else the reason is given):

- The socket is the core's ``UnixListener``: created at start-up with mode 0600
  (whoever connects gets the guest's console); a socket file left at the path by
  an earlier run is replaced, a live one or anything else there is refused, so a
  typo never deletes a user's file; removed at exit if it is still ours; an
  ``accept`` failure (out of fds) backs off instead of spinning.
- One client at a time; **the newest client wins**: a new connection replaces
  the current one, which is closed (as StratoVirt, whose listener simply takes
  the new stream).  A user whose terminal died can always reattach; the old
  client sees EOF.
- Guest output is never held back: Linux's hvc path spins with interrupts off
  until the device returns each transmit buffer (``__send_to_port``), so a
  stalled or absent client must not stall the guest.  What cannot be written
  to the client right now (none connected, or its socket is full) goes to a
  bounded buffer of ``OUTPUT_BUFFER`` bytes; when it overflows, the oldest
  bytes are dropped and counted (``output_dropped``).  A new client first gets
  what is buffered.
- Input is read only when the device says the guest has receive buffers
  (``want_input``): otherwise the client's bytes wait in the kernel's socket
  buffer, which pushes back on the client.  No host-side input buffer exists.
- A client that goes away (EOF+hang-up, reset, EPIPE) is closed and forgotten;
  output not yet written to it stays buffered for the next one.  A client that
  only shuts down its sending side keeps receiving output.

Everything runs on the device's event loop with non-blocking fds.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

from stratovmm.api import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EventLoop,
    UnixListener,
    skip_views,
)

log = logging.getLogger(__name__)

OUTPUT_BUFFER = 64 * 1024      # guest output kept while no client can take it
BACKLOG = 4


def keep_newest(pending: bytearray, views: Sequence[memoryview], skip: int, total: int,
                capacity: int) -> int:
    """Append ``views`` (``total`` bytes) past their first ``skip`` bytes to ``pending``,
    keeping only its newest ``capacity`` bytes; returns how many bytes were dropped."""
    keep = min(total - skip, capacity)
    start = total - keep                 # only the newest ``capacity`` bytes can survive
    dropped = start - skip
    for view in skip_views(views, start):
        pending += view
    excess = len(pending) - capacity
    if excess > 0:
        del pending[:excess]
        dropped += excess
    return dropped


class ConsoleSocket:
    """A listening unix socket at ``path`` and at most one connected client.

    ``on_input`` is called (on the loop) when the client has bytes for the
    guest and input is wanted; it reads them with ``recv_into``.
    """

    def __init__(self, path: str, loop: EventLoop, where: str = "-chardev path",
                 capacity: int = OUTPUT_BUFFER) -> None:
        self._loop = loop
        self._capacity = capacity
        self.on_input: Callable[[], None] = lambda: None
        self._pending = bytearray()
        self._client: socket.socket | None = None
        self._client_events = -1
        self._input_open = False       # the client may still send (no EOF seen)
        self._want_input = False
        self._stats = {"output_dropped": 0, "connections": 0, "disconnections": 0}
        self._listener = UnixListener(path, loop, self._on_connect, where, BACKLOG)
        self.path = self._listener.path

    # -- state seen by the device ------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Output dropped, connections, disconnections and failed accepts so far."""
        return {**self._stats, "accept_errors": self._listener.accept_errors}

    @property
    def connected(self) -> bool:
        """A client is connected."""
        return self._client is not None

    @property
    def buffered(self) -> int:
        """Guest output waiting for a client."""
        return len(self._pending)

    def want_input(self, wanted: bool) -> None:
        """The guest has (True) or has no (False) receive buffers: watch the client for
        input or stop, so input never piles up on the host and nothing spins."""
        self._want_input = wanted
        self._update_events()

    # -- guest output ------------------------------------------------------------------------

    def send(self, views: Sequence[memoryview]) -> None:
        """Guest output: to the client now if it can take it, else into the bounded buffer."""
        total = sum(len(v) for v in views)
        if total == 0:
            return
        sent = 0
        if self._client is not None and not self._pending:
            sent = self._sendmsg(list(views))
        if sent < total:
            self._buffer(views, sent, total)
        self._update_events()

    def _buffer(self, views: Sequence[memoryview], skip: int, total: int) -> None:
        self._stats["output_dropped"] += keep_newest(self._pending, views, skip, total,
                                                     self._capacity)

    def _sendmsg(self, views: list[memoryview]) -> int:
        """Write what the client takes without blocking; 0 (and the client dropped) on error."""
        client = self._client
        assert client is not None
        try:
            return client.sendmsg(views, (), socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return 0
        except OSError as exc:                 # EPIPE, ECONNRESET: the client went away
            self._drop_client(f"write failed: {exc.strerror or exc}")
            return 0

    def _flush(self) -> None:
        while self._pending and self._client is not None:
            with memoryview(self._pending) as view:     # released before the buffer shrinks
                n = self._sendmsg([view])
            if n <= 0:
                break
            del self._pending[:n]

    # -- guest input ---------------------------------------------------------------------------

    def recv_into(self, views: list[memoryview]) -> int | None:
        """Read client input into ``views``; None when there is none now (no client, would
        block, or the client stopped sending)."""
        client = self._client
        if client is None or not self._input_open:
            return None
        try:
            n = client.recvmsg_into(views)[0]
        except BlockingIOError:
            return None
        except OSError as exc:
            self._drop_client(f"read failed: {exc.strerror or exc}")
            return None
        if n == 0:                             # shutdown(SHUT_WR) or close: no more input
            self._input_open = False
            self._update_events()
            return None
        return n

    # -- clients ---------------------------------------------------------------------------------

    def _on_connect(self, conn: socket.socket) -> None:
        if self._client is not None:
            self._drop_client("replaced by a new client")
        self._client = conn
        self._client_events = -1
        self._input_open = True
        self._stats["connections"] += 1
        log.info("console %s: client connected", self.path)
        self._flush()
        self._update_events()

    def _on_client(self, events: int) -> None:
        if events & EPOLLIN and self._want_input and self._input_open:
            self.on_input()
        if self._client is None:
            return
        if events & (EPOLLHUP | EPOLLERR):
            self._drop_client("hung up")
            return
        if events & EPOLLOUT:
            self._flush()
        self._update_events()

    def _update_events(self) -> None:
        """Watch the client for input only when wanted and for output only when some waits."""
        client = self._client
        if client is None:
            return
        events = ((EPOLLIN if self._want_input and self._input_open else 0)
                  | (EPOLLOUT if self._pending else 0))
        if events == self._client_events:
            return
        if self._client_events < 0:
            self._loop.register(client.fileno(), events, self._on_client)
        else:
            self._loop.modify(client.fileno(), events)   # HUP/ERR are reported even with 0
        self._client_events = events

    def _drop_client(self, why: str) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._loop.unregister(client.fileno())
        client.close()
        self._client_events = -1
        self._input_open = False
        self._stats["disconnections"] += 1
        log.info("console %s: client %s", self.path, why)

    # -- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client and the listener; remove the socket file if it is still ours."""
        self._drop_client("closed: the VM is ending")
        self._listener.close()
