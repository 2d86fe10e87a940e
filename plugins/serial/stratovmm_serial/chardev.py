"""The UART's far end on a ``-chardev`` other than stdio: a pseudo-terminal, a unix socket
server or a file (StratoVirt 2.x's ``-serial chardev:ID``, ``chardev_backend/src/chardev.rs``).

The UART transmits from vCPU threads, one character per ``out`` instruction, and
Linux's 8250 driver does not wait for the host (THR is always empty here), so a
reader that is absent or slow must never stall a vCPU:

- ``FdChannel`` (pty master, socket client) writes without blocking; what the
  endpoint cannot take now (nobody reads the pty, no client is connected, the
  client's socket is full) goes to a bounded buffer of ``OUTPUT_BUFFER`` bytes,
  oldest dropped first and counted (``output_dropped``), written when the
  endpoint has room again or a client connects.  The buffer is shared by vCPU
  threads and the event loop, so it is guarded by a lock; the loop alone
  registers and reads the fd.
- Input is read on the loop only while the UART's 64-byte FIFO has room; when it
  is full the fd is no longer watched (the bytes wait in the kernel, which pushes
  back) until the guest drains the FIFO.
- ``SocketServer``: one client at a time and the newest wins, as the console
  socket and StratoVirt's listener (which takes the new stream); a client that
  hangs up is forgotten and output waits for the next; one that only shuts down
  its sending side keeps receiving output.
- ``FileSink``: output appended (``O_APPEND``, mode 0600, no symlink), no input;
  a write the file cannot take is dropped, counted and logged once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    ConfigError,
    EventLoop,
    Pty,
)

if TYPE_CHECKING:
    import socket

log = logging.getLogger(__name__)

OUTPUT_BUFFER = 64 * 1024      # serial output kept while the endpoint cannot take it
HUP_RETRY = 1.0                # seconds a pty that reported a hang-up is left alone


class FdChannel:
    """The UART's far end on a non-blocking fd that may come and go (``set_fd``)."""

    def __init__(self, loop: EventLoop, capacity: int = OUTPUT_BUFFER) -> None:
        self._loop = loop
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._fd = -1
        self._events = -1              # what the fd is registered for; -1: not registered
        self._update_queued = False
        self._out_watched = False      # the loop watches (or is about to) for output room
        self._input_open = False       # the endpoint may still send (no EOF seen)
        self._sink: Any = None
        self.dropped = 0

    # -- any thread ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Serial output (a vCPU thread): to the fd now if it takes it, else buffered."""
        with self._lock:
            sent = 0
            if self._fd >= 0 and not self._pending:
                sent = self._write_locked(data)
            rest = data[sent:]
            if rest:
                self._pending += rest
                excess = len(self._pending) - self._capacity
                if excess > 0:
                    del self._pending[:excess]
                    self.dropped += excess
            queue = (bool(self._pending) and self._fd >= 0 and not self._update_queued
                     and not self._out_watched)    # one wake-up per stall, not per byte
            self._update_queued |= queue
        if queue:
            self._loop.call_soon(self._update)

    def rx_space_available(self) -> None:
        """The guest drained its full FIFO: watch for input again."""
        self._loop.call_soon(self._update)

    def _write_locked(self, data: bytes | memoryview) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:                # EPIPE/ECONNRESET/EIO: the loop sees the hang-up
            return 0

    @property
    def buffered(self) -> int:
        """Output waiting for the endpoint."""
        with self._lock:
            return len(self._pending)

    def stats(self) -> dict[str, int]:
        """Output dropped and output waiting, for ``query-stats``."""
        return {"output_dropped": self.dropped, "output_buffered": self.buffered}

    # -- the loop's thread --------------------------------------------------------------------

    def attach(self, uart: Any) -> None:
        """Feed ``uart`` (``receive``/``rx_space``) from the fd."""
        self._sink = uart
        self._loop.call_soon(self._update)

    def set_fd(self, fd: int) -> None:
        """A new endpoint (the old one, if any, is the caller's to close after this)."""
        self._unwatch()
        with self._lock:
            self._fd = fd
        self._input_open = True
        self._flush()
        self._update()

    def _unwatch(self) -> None:
        if self._events >= 0:
            self._loop.unregister(self._fd)
            self._events = -1

    def _flush(self) -> None:
        with self._lock:
            while self._pending and self._fd >= 0:
                n = self._write_locked(bytes(self._pending[:self._capacity]))
                if n <= 0:
                    return
                del self._pending[:n]

    def _update(self) -> None:
        """Watch for input while the FIFO has room and for output room while bytes wait."""
        with self._lock:
            self._update_queued = False
            fd, pending = self._fd, bool(self._pending)
            self._out_watched = pending and fd >= 0
        if fd < 0:
            return
        room = self._input_open and self._sink is not None and self._sink.rx_space() > 0
        events = (EPOLLIN if room else 0) | (EPOLLOUT if pending else 0)
        if events == self._events:
            return
        if self._events < 0:
            self._loop.register(fd, events, self._on_ready)
        else:
            self._loop.modify(fd, events)
        self._events = events

    def _on_ready(self, events: int) -> None:
        if events & EPOLLIN and self._read() is False:
            self.hung_up()
            return
        if events & (EPOLLHUP | EPOLLERR) and not events & EPOLLIN:
            self.hung_up()
            return
        if events & EPOLLOUT:
            self._flush()
        self._update()

    def _read(self) -> bool:
        """Input into the FIFO; False when the endpoint is gone (an error).  At EOF (a
        client that shut down its sending side) input stops and output goes on."""
        space = self._sink.rx_space() if self._sink is not None else 0
        if space <= 0:
            return True
        try:
            data = os.read(self._fd, space)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            self._input_open = False
            return True
        self._sink.receive(data)
        return True

    def hung_up(self) -> None:
        """The endpoint went away: stop watching it (a socket server drops its client)."""
        self._unwatch()

    def close(self) -> None:
        """Stop watching the fd (its owner closes it)."""
        self._unwatch()
        with self._lock:
            self._fd = -1


class PtyChannel(FdChannel):
    """The UART on a new pseudo-terminal (its path printed as QEMU prints it)."""

    def __init__(self, loop: EventLoop, label: str) -> None:
        super().__init__(loop)
        self._pty = Pty(label, "-serial chardev: -chardev pty")
        self.path = self._pty.path
        self._hup_logged = False
        self.set_fd(self._pty.master)

    def hung_up(self) -> None:
        """Cannot happen while the slave is held open; if it does, the terminal is left
        alone for ``HUP_RETRY`` seconds (QEMU polls a pty that hung up once a second), so a
        level-triggered epoll cannot spin on it."""
        if not self._hup_logged:
            self._hup_logged = True
            log.warning("serial pty %s: the terminal hung up; retrying every %.0f s (logged"
                        " once)", self.path, HUP_RETRY)
        super().hung_up()
        self._loop.call_later(HUP_RETRY, self._update)

    def close(self) -> None:
        """Close the terminal."""
        super().close()
        self._pty.close()


class SocketServer(FdChannel):
    """The UART on a listening unix socket: one client, the newest wins."""

    def __init__(self, loop: EventLoop, path: str) -> None:
        super().__init__(loop)
        self._client: socket.socket | None = None
        from stratovmm.api import UnixListener  # not imported by a VM without one

        self._listener = UnixListener(path, loop, self._on_connect, "-serial chardev: -chardev"
                                      " socket path")
        self.path = self._listener.path

    def _on_connect(self, conn: socket.socket) -> None:
        old, self._client = self._client, conn
        self.set_fd(conn.fileno())
        if old is not None:
            old.close()
            log.info("serial socket %s: client replaced by a new one", self.path)

    def hung_up(self) -> None:
        """The client went away: forget it; output waits for the next one."""
        super().close()
        client, self._client = self._client, None
        if client is not None:
            client.close()
            log.info("serial socket %s: client hung up", self.path)

    def close(self) -> None:
        """Close the client and the listener (the socket file is removed)."""
        self.hung_up()
        self._listener.close()


class FileSink:
    """Serial output appended to a file; no input."""

    def __init__(self, path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"-serial chardev: -chardev file path: cannot open {path}:"
                              f" {exc.strerror}") from None
        self.path = path
        self.dropped = 0
        self._warned = False

    def stats(self) -> dict[str, int]:
        """Output the file could not take, for ``query-stats``."""
        return {"output_dropped": self.dropped}

    def attach(self, uart: Any) -> None:
        """A file has no input."""

    def rx_space_available(self) -> None:
        """A file has no input."""

    def write(self, data: bytes) -> None:
        """Append the guest's bytes (one write: O_APPEND writes are whole); what the file
        cannot take is dropped and counted."""
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            written = 0
            if not self._warned:
                self._warned = True
                log.warning("serial file %s: %s; output dropped (logged once)", self.path,
                            exc.strerror)
        self.dropped += len(data) - written

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
