"""The host side of a drive: the image file, zero-copy I/O, and O_DIRECT alignment.

Reads and writes go straight between the image and guest memory with
``os.preadv``/``os.pwritev`` on memoryviews of guest RAM.  With ``direct=on`` the
file is opened ``O_DIRECT``: guest buffers that meet the alignment are still
used directly; only a request with an unaligned buffer goes through an
aligned bounce buffer (an anonymous mmap, page-aligned by construction), in
``BOUNCE_CHUNK`` pieces: the buffer is made once per drive and its size is a
constant, whatever the guest asks for (a chain may name the same guest pages
again and again, up to 4 GiB).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat

from stratovmm.api import (
    ConfigError,
    gather,
    scatter,
    skip_views,
)

log = logging.getLogger(__name__)

SECTOR = 512
DIRECT_ALIGN = 512       # logical block size O_DIRECT needs for offsets, lengths, addresses
BOUNCE_CHUNK = 1 << 20   # host bytes an unaligned direct request moves at a time


class BlockBackend:
    """An open image of ``size`` bytes: a regular file or a block device.

    ``direct`` True opens with ``O_DIRECT``; None is StratoVirt v0.3's default
    (``direct`` is on unless turned off), falling back to the page cache, with a
    warning, on a file system that refuses ``O_DIRECT`` (tmpfs: EINVAL), where
    v0.3 would fail the drive.
    """

    def __init__(self, path: str, read_only: bool = False, direct: bool | None = False,
                 option: str = "-drive file") -> None:
        self.fd = _open_image(path, read_only, direct, option)
        try:
            # as QEMU's image locking: one writer, or any number of readers, per image
            fcntl.flock(self.fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise ConfigError(f"{option}: {path} is in use by another drive or process"
                              " (a writable image can be opened once)") from None
        self.path = path
        self.read_only = read_only
        self.direct = bool(fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_DIRECT)
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self._bounce: mmap.mmap | None = None       # made on the first unaligned request

    @property
    def sectors(self) -> int:
        """Capacity in 512-byte sectors (a partial last sector is not exposed)."""
        return self.size // SECTOR

    def read(self, views: list[memoryview], offset: int) -> int:
        """Fill ``views`` from ``offset``; bytes past EOF read as zeros."""
        if self.direct and not _aligned(views, offset):
            return self._bounce_read(views, offset)
        done = _loop_io(os.preadv, self.fd, views, offset)
        length = sum(len(v) for v in views)
        if done < length:
            _zero_tail(views, done)
        return length

    def write(self, views: list[memoryview], offset: int) -> int:
        """Write ``views`` at ``offset``."""
        if self.direct and not _aligned(views, offset):
            return self._bounce_write(views, offset)
        return _loop_io(os.pwritev, self.fd, views, offset)

    def flush(self) -> None:
        """Make every completed write durable (VIRTIO_BLK_T_FLUSH)."""
        os.fdatasync(self.fd)

    def _bounce_buffer(self) -> mmap.mmap:
        if self._bounce is None:
            self._bounce = mmap.mmap(-1, BOUNCE_CHUNK)
        return self._bounce

    def _bounce_read(self, views: list[memoryview], offset: int) -> int:
        """Read through the bounce buffer a chunk at a time; bytes past EOF read as zeros."""
        length = sum(len(v) for v in views)
        pos = 0
        with memoryview(self._bounce_buffer()) as bounce:
            while pos < length:
                n = min(BOUNCE_CHUNK, length - pos)
                got = min(n, _loop_io(os.preadv, self.fd, [bounce[:_round_up(n)]], offset + pos))
                bounce[got:n] = bytes(n - got)
                scatter(views, bounce[:n], pos)
                pos += n
        return length

    def _bounce_write(self, views: list[memoryview], offset: int) -> int:
        """Write through the bounce buffer a chunk at a time; returns bytes written."""
        length = sum(len(v) for v in views)
        done = 0
        with memoryview(self._bounce_buffer()) as bounce:
            while done < length:
                n = min(BOUNCE_CHUNK, length - done)
                gather(views, bounce[:n], done)
                wrote = _loop_io(os.pwritev, self.fd, [bounce[:n]], offset + done)
                done += wrote
                if wrote < n:
                    break
        return done

    def close(self) -> None:
        """Close the image and free the bounce buffer."""
        os.close(self.fd)
        if self._bounce is not None:
            self._bounce.close()


def _check_kind(mode: int, path: str, option: str) -> None:
    """Only a regular file or a block device can be a disk: a FIFO, socket or character
    device would block or fail on the first request (v0.3's ``blockdev_add`` checks the
    same)."""
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{option}: {path} is a directory, not a disk image")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise ConfigError(f"{option}: {path} is not a regular file or a block device")


def _open_image(path: str, read_only: bool, direct: bool | None, option: str) -> int:
    """Open ``path`` for the backend; every failure is a ``ConfigError`` naming it.

    The kind is checked before ``open`` (opening a device can act on it) and again on
    the fd (the path may have changed in between).  ``O_NONBLOCK`` keeps ``open`` itself
    from waiting, as it would for a FIFO without a writer on the main loop; it is
    cleared once the fd is known to be a file or a block device.
    """
    try:
        _check_kind(os.stat(path).st_mode, path, option)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, (flags | os.O_DIRECT) if direct is not False else flags)
        except OSError as exc:
            if direct is not None or exc.errno != errno.EINVAL:
                raise
            log.warning("%s: %s: the file system refuses O_DIRECT; using the page cache",
                        option, path)
            fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"{option}: {path}: {exc.strerror}") from exc
    try:
        _check_kind(os.fstat(fd).st_mode, path, option)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except (ConfigError, OSError):
        os.close(fd)
        raise
    return fd


def _round_up(n: int) -> int:
    return (n + DIRECT_ALIGN - 1) // DIRECT_ALIGN * DIRECT_ALIGN


def host_address(view: memoryview) -> int:
    """Where ``view``'s first byte lives in our address space (guest RAM is writable)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _aligned(views: list[memoryview], offset: int) -> bool:
    """O_DIRECT can use the guest buffers as they are: every buffer's host address and
    length, and the file offset, are multiples of the logical block size."""
    if offset % DIRECT_ALIGN:
        return False
    return all(len(v) % DIRECT_ALIGN == 0 and host_address(v) % DIRECT_ALIGN == 0
               for v in views)


def _loop_io(op: object, fd: int, views: list[memoryview], offset: int) -> int:
    """Repeat a vectored read/write until done or EOF; returns bytes moved."""
    total = sum(len(v) for v in views)
    done = 0
    while done < total:
        rest = skip_views(views, done) if done else views     # one call, usually
        n = op(fd, rest, offset + done)  # type: ignore[operator]
        if n <= 0:
            break
        done += n
    return done


def _zero_tail(views: list[memoryview], done: int) -> None:
    for view in skip_views(views, done):
        view[:] = bytes(len(view))
