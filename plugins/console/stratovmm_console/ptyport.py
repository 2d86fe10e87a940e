"""The host side of a console on a pseudo-terminal (StratoVirt 2.x's and QEMU's ``-chardev
pty,id=ID``): guest output to the pty, what is typed into the pty to the guest.

The core's ``Pty`` opens the terminal (raw, its path announced as QEMU does) and
keeps the slave open, so the master never hangs up.  The policy is the socket
console's (``backend``):

- Guest output is never held back (Linux's hvc path spins until each transmit
  buffer comes back): what the terminal cannot take now, because nobody reads
  the slave and its buffer is full, waits in a bounded buffer of
  ``OUTPUT_BUFFER`` bytes whose oldest bytes are dropped and counted
  (``output_dropped``); it is written when the terminal has room again.
- Input is read only while the guest has receive buffers (``want_input``);
  otherwise typed bytes wait in the terminal's own buffer, which pushes back.
- A hang-up cannot happen while the slave is held, but if the master reports
  one the terminal is not watched for ``HUP_RETRY`` seconds (QEMU polls a pty
  that hung up once a second), so a level-triggered epoll cannot spin on it.

Everything runs on the device's event loop with the master non-blocking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from stratovmm.api import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop, Pty
from stratovmm_console.backend import OUTPUT_BUFFER, keep_newest

log = logging.getLogger(__name__)

HUP_RETRY = 1.0          # seconds a terminal that reported a hang-up is left alone


class ConsolePty:
    """A new pseudo-terminal as port 0's host side; ``path`` is the slave to open."""

    def __init__(self, label: str, loop: EventLoop, capacity: int = OUTPUT_BUFFER) -> None:
        self._pty = Pty(label)
        self.path = self._pty.path
        self._loop = loop
        self._capacity = capacity
        self.on_input: Callable[[], None] = lambda: None
        self._pending = bytearray()
        self._want_input = False
        self._events = -1
        self._dropped = 0
        self._warned = False
        self._paused = False     # a hang-up was reported: not watched until HUP_RETRY passes

    @property
    def stats(self) -> dict[str, int]:
        """Bytes of guest output dropped while the terminal could not take them."""
        return {"output_dropped": self._dropped}

    @property
    def connected(self) -> bool:
        """A terminal is always there (whether anyone reads it cannot be told)."""
        return True

    @property
    def buffered(self) -> int:
        """Guest output waiting for room in the terminal."""
        return len(self._pending)

    def want_input(self, wanted: bool) -> None:
        """Watch the terminal for typed bytes only while the guest has receive buffers."""
        self._want_input = wanted
        self._update_events()

    def send(self, views: Sequence[memoryview]) -> None:
        """Guest output: to the terminal now if it has room, else into the bounded buffer."""
        total = sum(len(v) for v in views)
        if total == 0:
            return
        sent = 0 if self._pending else self._write(list(views))
        if sent < total:
            self._dropped += keep_newest(self._pending, views, sent, total, self._capacity)
        self._update_events()

    def _write(self, views: list[memoryview]) -> int:
        """What the terminal takes without blocking; a write error drops nothing here (the
        caller buffers the rest) but is logged once."""
        if self._pty.master < 0:
            return 0
        try:
            return os.writev(self._pty.master, views)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("console pty %s: write failed: %s (logged once)", self.path,
                            exc.strerror)
            return 0

    def _flush(self) -> None:
        while self._pending:
            with memoryview(self._pending) as view:     # released before the buffer shrinks
                n = self._write([view])
            if n <= 0:
                return
            del self._pending[:n]

    def recv_into(self, views: list[memoryview]) -> int | None:
        """Typed bytes into ``views``; None when there are none now."""
        if self._pty.master < 0:
            return None
        try:
            n = os.readv(self._pty.master, views)
        except OSError:                   # EAGAIN: nothing typed; EIO cannot happen while
            return None                   # the slave is held, and means no input if it does
        return n or None

    def _on_ready(self, events: int) -> None:
        if events & (EPOLLHUP | EPOLLERR) and not events & EPOLLIN:
            self._pause()
            return
        if events & EPOLLIN and self._want_input:
            self.on_input()
        if events & EPOLLOUT:
            self._flush()
        self._update_events()

    def _pause(self) -> None:
        """Stop watching a terminal that reports a hang-up; look again in ``HUP_RETRY``."""
        if not self._paused:
            log.warning("console pty %s: the terminal hung up; retrying every %.0f s",
                        self.path, HUP_RETRY)
        self._paused = True
        self._loop.unregister(self._pty.master)
        self._events = -1
        self._loop.call_later(HUP_RETRY, self._resume)

    def _resume(self) -> None:
        self._paused = False
        self._update_events()

    def _update_events(self) -> None:
        """Watch for input only when wanted and for room only when output waits."""
        if self._pty.master < 0 or self._paused:
            return
        events = (EPOLLIN if self._want_input else 0) | (EPOLLOUT if self._pending else 0)
        if events == self._events:
            return
        if self._events < 0:
            self._loop.register(self._pty.master, events, self._on_ready)
        else:
            self._loop.modify(self._pty.master, events)
        self._events = events

    def close(self) -> None:
        """Stop watching and close the terminal (its path goes away with it)."""
        if self._events >= 0:
            self._loop.unregister(self._pty.master)
            self._events = -1
        self._pty.close()
