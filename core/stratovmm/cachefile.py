"""Files StratoVMM keeps between starts (``stratovmm.entrypoints``' plugin list,
``stratovmm.host.seccompcache``'s compiled filters): where they live and how they are
written and read.

They live in ``$STRATOVMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/stratovmm``, else
``~/.cache/stratovmm`` (made 0700).  A file is written whole to a temporary name with
mode 0600 and renamed over the old one, so a reader never sees half of it; it is read
only when it belongs to this user and nobody else can write it.  A cache that cannot be
written or read is not used: each caller then does the work it saves.

A file holds one value of plain data (dicts, lists, strings, bytes, numbers) in
``marshal``'s format: a built-in module, so reading a cache at start-up imports nothing
(the ``json`` package, with the regular expressions its modules compile, was ~3 ms of a
start here).  ``marshal`` is not meant for data from others; these files are, by the
checks above, only ever their owner's, and one that does not load reads as None; each
caller still checks that what loaded has the shape it wrote."""

from __future__ import annotations

import marshal
import os
import stat
from typing import Any


def cache_dir() -> str:
    """Where the cache lives (see the module docstring)."""
    explicit = os.environ.get("STRATOVMM_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stratovmm")


def write_private(path: str, value: Any) -> None:
    """Replace ``path`` with ``value`` atomically, mode 0600 (nothing on failure)."""
    data = marshal.dumps(value)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def read_private(path: str) -> Any:
    """The value kept in ``path`` if it is a regular file of this user that no one else
    may write and it loads; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return None
        try:
            return marshal.loads(f.read())
        except (OSError, EOFError, ValueError, TypeError):
            return None
