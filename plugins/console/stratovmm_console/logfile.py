"""The host side of a console written to a file (StratoVirt 2.x's and QEMU's ``-chardev
file,path=``): the guest's output is appended, and there is no input.

StratoVirt 2.x opens the file for writing without truncating it, so a shorter run
leaves the end of an earlier one behind the new output; QEMU truncates it.  Here it
is appended to (``O_APPEND``), which keeps earlier runs whole and never mixes
them.  The file is created with mode 0600 (it holds what the guest prints) and a
symlink at the path is refused (``O_NOFOLLOW``).  A write the host cannot do (the
disk is full) drops that output, counted in ``output_dropped`` and logged once:
Linux's hvc path waits for each transmit buffer, so the guest must not wait for
the host's disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from stratovmm.api import ConfigError

log = logging.getLogger(__name__)


class ConsoleFile:
    """Guest output appended to ``path``; the console port interface of ``ConsoleSocket``
    with no client and no input."""

    def __init__(self, path: str, where: str = "-chardev file path") -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot open {path}: {exc.strerror}") from None
        self.path = path
        self.on_input: Callable[[], None] = lambda: None
        self._dropped = 0
        self._warned = False

    @property
    def stats(self) -> dict[str, int]:
        """Bytes of guest output the file could not take."""
        return {"output_dropped": self._dropped}

    @property
    def connected(self) -> bool:
        """The file always takes output."""
        return True

    @property
    def buffered(self) -> int:
        """Nothing is held: output goes straight to the file."""
        return 0

    def want_input(self, wanted: bool) -> None:
        """A file has no input for the guest."""

    def send(self, views: Sequence[memoryview]) -> None:
        """Append the guest's bytes; what the file cannot take is dropped and counted."""
        pending = [view for view in views if len(view)]
        while pending:
            try:
                written = os.writev(self.fd, pending)
            except OSError as exc:
                self._dropped += sum(len(view) for view in pending)
                if not self._warned:
                    self._warned = True
                    log.warning("console file %s: %s; guest output dropped (logged once,"
                                " counted in output_dropped)", self.path, exc.strerror)
                return
            while pending and written >= len(pending[0]):
                written -= len(pending.pop(0))
            if pending:
                pending[0] = pending[0][written:]

    def recv_into(self, views: list[memoryview]) -> int | None:
        """Never any input: the receive buffer stays with the device."""
        return None

    def close(self) -> None:
        """Close the file (it stays on disk)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
