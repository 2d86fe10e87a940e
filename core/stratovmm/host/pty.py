"""A pseudo-terminal for a ``-chardev pty,id=ID`` (StratoVirt 2.x's and QEMU's pty back end).

What the VMM holds and why, after StratoVirt 2.x (``chardev_backend/src/chardev.rs``,
``set_pty_raw_mode``) and QEMU (``chardev/char-pty.c``):

- ``openpty``: the VMM keeps the master, the user opens the slave (``/dev/pts/N``)
  with any terminal program (``screen``, ``minicom``, ``cat``).
- The slave is put in raw mode (``cfmakeraw``): the guest's bytes reach the
  reader as the guest wrote them, and what the reader types reaches the guest
  unchanged (no echo, no line editing, no CR/NL translation by the host).
- The VMM keeps its own slave descriptor open, as StratoVirt does: the slave
  then never reaches its last close, so the master never reports a hang-up
  (which a level-triggered epoll would report again at once) and the raw mode
  outlives a reader that comes and goes.
- The master is non-blocking: while nobody reads the slave, the terminal's
  buffer fills and a write returns ``EAGAIN``; the front end keeps a bounded
  buffer and drops the oldest output past it, so the guest never waits.
- The path is announced on stderr as QEMU announces it
  (``char device redirected to /dev/pts/N (label ID)``), so a user or a script
  can find the terminal to open, and listed while it is open (``open_ptys``) for
  QMP's ``query-chardev``, as StratoVirt 2.x keeps its ``PTY_PATH`` list.
"""

from __future__ import annotations

import logging
import os
import sys
import termios
import tty

from stratovmm.errors import ConfigError

log = logging.getLogger(__name__)

_OPEN: list[Pty] = []       # the process's open ptys, in opening order (query-chardev)


class Pty:
    """The master of a new pseudo-terminal (non-blocking, close-on-exec) and the path of its
    slave; ``close`` releases both ends."""

    def __init__(self, label: str, where: str = "-chardev pty") -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise ConfigError(f"{where} (id {label!r}): cannot open a pseudo-terminal:"
                              f" {exc.strerror}") from None
        self.master, self._slave = master, slave
        try:
            self.path = os.ttyname(slave)
            tty.setraw(slave, termios.TCSAFLUSH)
            os.set_blocking(master, False)
        except OSError as exc:
            self.close()
            raise ConfigError(f"{where} (id {label!r}): cannot set up the pseudo-terminal:"
                              f" {exc.strerror}") from None
        self.label = label
        announce(self.path, label)
        _OPEN.append(self)

    def close(self) -> None:
        """Close the master and the VMM's slave descriptor (idempotent)."""
        for fd in (self.master, self._slave):
            if fd >= 0:
                os.close(fd)
        self.master = self._slave = -1
        if self in _OPEN:
            _OPEN.remove(self)


def open_ptys() -> list[tuple[str, str]]:
    """(label, slave path) of each pty open in this process, in opening order."""
    return [(pty.label, pty.path) for pty in _OPEN]


def announce(path: str, label: str) -> None:
    """Tell the user which terminal to open, in QEMU's words, on stderr and in the log."""
    message = f"char device redirected to {path} (label {label})"
    log.info("%s", message)
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):          # stderr closed: the log has it
        pass
