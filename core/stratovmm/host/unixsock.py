"""The one way the VMM serves a unix socket: ``UnixListener`` (QMP, console, vsock).

Connecting to a unix socket needs write permission on its file (unix(7)), so
the file's mode decides which local users reach what the VMM serves there: the
QMP socket is full control of the VM, a console socket is the guest's console,
a vsock socket is a way into the guest.  Every listener the VMM creates is
therefore mode 0600, whatever the umask (StratoVirt also limits its sockets'
permission).

Linux creates the socket file with the mode of the socket's own inode minus the
umask (``unix_bind_bsd`` in ``net/unix/af_unix.c``: ``S_IFSOCK |
(SOCK_INODE(sock)->i_mode & ~current_umask())``), so ``fchmod(fd, 0600)``
before ``bind()`` makes the file 0600 from its first instant.  The other ways
are worse here: the umask is process-wide, and iothreads or plugin threads may
create files while a listener is being bound; binding in a private directory
and renaming into place needs a second path and a clean-up on every error.

What else every listener needs, done once here:

* the path must fit ``sockaddr_un.sun_path`` (``SUN_PATH_MAX`` bytes and a NUL);
* a socket file left by a VMM that died is replaced, but only after a probe
  ``connect`` is refused: a live listener (another VMM) or anything that is not
  a socket is refused, so a typo never deletes a user's file;
* the file is removed at close only if it is still the one we bound (another
  process may have replaced it since);
* accepting never blocks the loop and never spins on it: at most
  ``ACCEPTS_PER_WAKEUP`` connections per wake-up, and when ``accept`` fails
  (``EMFILE``: out of descriptors) the listener stops watching for
  ``ACCEPT_RETRY`` seconds, since a level-triggered epoll would report the
  pending connection again at once.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from stratovmm.errors import ConfigError
from stratovmm.host.eventloop import EPOLLIN, EventLoop, Timer

if TYPE_CHECKING:
    import socket

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600
SUN_PATH_MAX = 107             # sizeof(sockaddr_un.sun_path) - 1 for the NUL (unix(7))
ACCEPTS_PER_WAKEUP = 16
ACCEPT_RETRY = 1.0             # seconds without accepting after accept() failed


def private_listener(path: str, backlog: int) -> socket.socket:
    """A non-blocking, close-on-exec unix stream socket listening at ``path``, mode 0600.

    ``OSError`` from ``bind``/``listen`` (the caller says which option it was);
    the socket is closed then.  Whatever was at ``path`` is the caller's business.
    """
    import socket  # here: a VM that serves no socket does not import the module

    sock = socket.socket(socket.AF_UNIX,
                         socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        os.fchmod(sock.fileno(), SOCKET_MODE)
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def check_socket_path(path: str, where: str, suffix: str = "") -> str:
    """The absolute form of ``path`` if a listener can be made there; ``ConfigError``
    naming ``where`` otherwise.  ``suffix`` is the longest text the caller appends to
    name more sockets beside it (vsock's ``_PORT``): those must fit too.

    Only the checks without side effects; ``bind`` may still fail.
    """
    full = os.path.abspath(path)
    if len(os.fsencode(full + suffix)) > SUN_PATH_MAX:
        raise ConfigError(f"{where}: {full}{suffix}: longer than {SUN_PATH_MAX} bytes (unix"
                          " socket limit)")
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"{where}: {full}: {exc.strerror}") from None
    if st is not None and not stat.S_ISSOCK(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a file that is not a socket"
        raise ConfigError(f"{where}: {full} exists and is {kind} (not replaced)")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise ConfigError(f"{where}: {full}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {full}: directory {parent} is not writable")
    return full


def remove_stale_socket(path: str, where: str) -> None:
    """Remove the socket file at ``path`` if nobody listens there (its VMM died);
    ``ConfigError`` if someone does, or if it is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{where}: {path} exists and is not a socket (not replaced)")
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{where}: {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ConfigError(f"{where}: cannot listen on {path}: another process is listening there")


class UnixListener:
    """A 0600 unix socket listening at ``path`` and accepting on ``loop``.

    ``on_accept(sock)`` runs on the loop for each connection, which arrives
    non-blocking and close-on-exec; keeping or closing it is the callback's
    business.  The constructor binds (``ConfigError`` naming ``where`` for any
    path problem or bind failure); ``close`` stops listening and removes the file.
    """

    def __init__(self, path: str, loop: EventLoop, on_accept: Callable[[socket.socket], None],
                 where: str, backlog: int = 16) -> None:
        self.path = check_socket_path(path, where)
        self.where = where
        self.accept_errors = 0
        self._loop = loop
        self._on_accept = on_accept
        self._retry: Timer | None = None
        remove_stale_socket(self.path, where)
        try:
            self._sock = private_listener(self.path, backlog)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot listen on {self.path}: {exc.strerror or exc}"
                              ) from None
        st = os.lstat(self.path)                   # the file bind() made
        self._file_id = (st.st_dev, st.st_ino)
        self._open = True
        loop.register(self._sock.fileno(), EPOLLIN, self._on_ready)

    def fileno(self) -> int:
        """The listening socket's fd."""
        return self._sock.fileno()

    def _on_ready(self, _events: int) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.accept_errors += 1
                log.error("%s %s: accept failed: %s; retrying in %.0f s", self.where, self.path,
                          exc.strerror or exc, ACCEPT_RETRY)
                self._loop.unregister(self._sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY, self._rearm)
                return
            sock.setblocking(False)
            self._on_accept(sock)

    def _rearm(self) -> None:
        self._retry = None
        if self._open:
            self._loop.register(self._sock.fileno(), EPOLLIN, self._on_ready)

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still the one we bound."""
        if not self._open:
            return
        self._open = False
        if self._retry is not None:
            self._retry.cancel()
        self._loop.unregister(self._sock.fileno())
        self._sock.close()
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._file_id:
                os.unlink(self.path)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("%s: cannot remove %s: %s", self.where, self.path, exc)
