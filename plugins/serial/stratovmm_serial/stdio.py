"""The stdio backend: guest output to stdout, stdin to the guest, raw terminal mode.

Raw mode is set only when stdin is a terminal and is restored on every exit
path we can see: the device's ``close`` (orderly shutdown), ``atexit`` (an
exception unwinding ``main``), and the SIGTERM/SIGINT path, which ends in an
orderly shutdown.  Only SIGKILL leaves the terminal raw.
"""

from __future__ import annotations

import atexit
import logging
import os
import termios
import tty
from typing import Any

from stratovmm.api import EPOLLIN, EventLoop

log = logging.getLogger(__name__)


class StdioBackend:
    """stdin/stdout of the VMM process as the UART's far end."""

    def __init__(self, loop: EventLoop, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
        self._loop = loop
        self._in = stdin_fd
        self._out = stdout_fd
        self._saved: list[Any] | None = None
        self._watching = False
        self._sink: Any = None

    def attach(self, uart: Any) -> None:
        """Start feeding ``uart`` (anything with ``receive``/``rx_space``) from stdin."""
        self._sink = uart
        if os.isatty(self._in):
            self._saved = termios.tcgetattr(self._in)
            tty.setraw(self._in)
            atexit.register(self.restore_terminal)
        self._watch()

    def write(self, data: bytes) -> None:
        """Guest output: written through, never dropped (a full pipe blocks the vCPU)."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._out, view)
            except BlockingIOError:
                continue
            except OSError:
                return                     # stdout closed: the guest keeps running
            view = view[n:]

    def rx_space_available(self) -> None:
        """The guest drained its FIFO: start reading stdin again (any thread)."""
        self._loop.call_soon(self._watch)

    def _watch(self) -> None:
        if not self._watching and self._sink is not None and self._in >= 0:
            try:
                self._loop.register(self._in, EPOLLIN, self._on_stdin)
                self._watching = True
            except (OSError, ValueError):      # e.g. /dev/null or a regular file: no input
                self._in = -1

    def _on_stdin(self, _events: int) -> None:
        space = self._sink.rx_space()
        if space <= 0:
            self._loop.unregister(self._in)
            self._watching = False
            return
        try:
            data = os.read(self._in, space)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:                           # EOF: stop watching
            self._loop.unregister(self._in)
            self._watching = False
            self._in = -1
            return
        self._sink.receive(data)

    def restore_terminal(self) -> None:
        """Put the terminal back as we found it (idempotent)."""
        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            except termios.error:
                log.warning("could not restore the terminal mode")

    def close(self) -> None:
        """Stop reading stdin and restore the terminal."""
        if self._watching and self._in >= 0:
            self._loop.unregister(self._in)
            self._watching = False
        self.restore_terminal()
