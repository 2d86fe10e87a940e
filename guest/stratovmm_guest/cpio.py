"""A deterministic initramfs writer: cpio "newc" (``070701``), optionally gzip.

Why not ``cpio -o``: it records the builder's uid, mtimes and inode numbers
and needs root to create ``/dev/console``.  Here every entry is owned by 0:0
with mtime 0, entries are sorted (a parent before its children), inode
numbers count from 1, and device nodes are written as entries without
existing on the host, so the same staging tree always gives the same bytes.
The kernel needs ``/dev/console`` in the archive itself: it opens it for
``/init``'s stdio before ``/init`` can mount devtmpfs.

Format: Documentation/driver-api/early-userspace/buffer-format.rst -- a
110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated
name padded to 4 bytes, the data padded to 4 bytes; ``TRAILER!!!`` ends it.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class DeviceNode:
    """A device file to put in the archive (``kind`` is ``"c"`` or ``"b"``)."""

    path: str
    kind: str
    major: int
    minor: int
    mode: int

    @classmethod
    def parse(cls, spec: str) -> DeviceNode:
        """``PATH:c|b:MAJOR:MINOR:OCTAL_MODE``, e.g. ``/dev/console:c:5:1:0600``."""
        try:
            path, kind, major, minor, mode = spec.split(":")
            node = cls(path.strip("/"), kind, int(major), int(minor), int(mode, 8))
        except ValueError as exc:
            raise ValueError(f"device node {spec!r}: want PATH:c|b:MAJOR:MINOR:MODE") from exc
        if kind not in ("c", "b") or not node.path:
            raise ValueError(f"device node {spec!r}: want PATH:c|b:MAJOR:MINOR:MODE")
        return node

    @property
    def st_mode(self) -> int:
        """File type bits plus permissions, as the header's mode field wants them."""
        return (stat.S_IFCHR if self.kind == "c" else stat.S_IFBLK) | (self.mode & 0o7777)


CONSOLE_NODES = (DeviceNode("dev/console", "c", 5, 1, 0o600),
                 DeviceNode("dev/null", "c", 1, 3, 0o666))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def entry(ino: int, mode: int, nlink: int, name: str, data: bytes = b"",
          rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One header + name + data, each padded to 4 bytes; uid, gid, mtime are 0."""
    name_b = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
    head = MAGIC + b"".join(b"%08x" % f for f in fields) + name_b
    return head + _pad4(len(head)) + data + _pad4(len(data))


def _tree(root: Path) -> list[tuple[str, Path]]:
    """Archive names and host paths under ``root``; string order puts parents first."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def newc_archive(root: Path, nodes: tuple[DeviceNode, ...] = ()) -> bytes:
    """The archive of the tree ``root`` (regular files, dirs, symlinks) plus ``nodes``.

    A node replaces a staging file of the same name; sockets and fifos in the
    tree are skipped (an initramfs has no use for them).
    """
    node_names = {n.path for n in nodes}
    out = bytearray()
    ino = 1
    for name, path in _tree(root):
        if name in node_names:
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            mode, nlink, data = stat.S_IFLNK | 0o777, 1, os.readlink(path).encode()
        elif stat.S_ISDIR(st.st_mode):
            mode, nlink, data = stat.S_IFDIR | stat.S_IMODE(st.st_mode), 2, b""
        elif stat.S_ISREG(st.st_mode):
            mode, nlink, data = stat.S_IFREG | stat.S_IMODE(st.st_mode), 1, path.read_bytes()
        else:
            continue
        out += entry(ino, mode, nlink, name, data)
        ino += 1
    for node in sorted(nodes, key=lambda n: n.path):
        out += entry(ino, node.st_mode, 1, node.path, rdev=(node.major, node.minor))
        ino += 1
    out += entry(0, 0, 1, TRAILER)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def gzipped(archive: bytes) -> bytes:
    """gzip with mtime 0 and no file name, so compression stays deterministic too.

    GzipFile rather than gzip.compress: its header (OS byte 255) has been the
    same across Python versions, and matches the team's earlier mkcpio.py.
    """
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(archive)
    return out.getvalue()
