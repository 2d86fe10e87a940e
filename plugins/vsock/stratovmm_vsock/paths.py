"""Where the userspace bridge listens: ``uds-path`` when given, else a default path.

StratoVirt v0.3's ``-device vsock,id=ID,guest-cid=N`` has no socket path: it
needs ``/dev/vhost-vsock``.  On a host without that device the guest still
gets its vsock, bridged to unix sockets at a path derived from ``-name`` (or
the VMM's pid when there is no usable name), in a directory only this user
can write:

- ``$XDG_RUNTIME_DIR/stratovmm/`` when ``XDG_RUNTIME_DIR`` is set (the user's
  runtime directory, as systemd sets it up for a login session);
- else ``/run/stratovmm/`` for root;
- else ``/tmp/stratovmm-UID/``.

The directory is made ``0700`` when missing; an existing one must be a real
directory (not a symlink) owned by this user and writable by nobody else, so
no other local user can plant or swap the socket.  The file is ``NAME.vsock``
(``PID.vsock`` without a name), and guest connections to host port P reach
``NAME.vsock_P`` beside it.
"""

from __future__ import annotations

import os
import re
import stat

from stratovmm.api import ConfigError

#: The kernel's vhost-vsock device; without it the guest's vsock is bridged to unix sockets.
VHOST_VSOCK_PATH = "/dev/vhost-vsock"

# guest connections to host port P reach PATH_P: the longest such path must fit a unix
# socket address too (checked with the core's check_socket_path)
PORT_SUFFIX = "_4294967295"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def runtime_dir() -> str:
    """The directory of default socket paths for this user (see the module docstring)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "stratovmm")
    if os.geteuid() == 0:
        return "/run/stratovmm"
    return f"/tmp/stratovmm-{os.geteuid()}"


def default_socket_path(name: str | None) -> str:
    """``runtime_dir()/NAME.vsock``; the pid stands in for a missing name or one that is not
    a plain file name (letters, digits, ``_ . -``, not starting with a dot)."""
    stem = name if name is not None and _NAME.fullmatch(name) else str(os.getpid())
    return os.path.join(runtime_dir(), f"{stem}.vsock")


def ensure_private_dir(directory: str, where: str) -> None:
    """Make ``directory`` (0700) if missing; refuse one another user could write to."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create {directory}: {exc.strerror}") from None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{where}: {directory} is not a directory (a symlink?)")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"{where}: {directory} must belong to uid {os.geteuid()} and be"
                          " writable by nobody else")
