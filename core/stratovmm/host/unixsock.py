"""Unix listening sockets that only their owner can connect to.

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
"""

from __future__ import annotations

import os
import socket

SOCKET_MODE = 0o600


def private_listener(path: str, backlog: int) -> socket.socket:
    """A non-blocking, close-on-exec unix stream socket listening at ``path``, mode 0600.

    ``OSError`` from ``bind``/``listen`` (the caller says which option it was);
    the socket is closed then.  Whatever was at ``path`` is the caller's business.
    """
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
