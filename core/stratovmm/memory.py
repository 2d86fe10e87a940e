"""Guest RAM: one host mapping split into guest-physical regions, with checked access.

Every guest-supplied address goes through ``slice``/``read``/``write``, which
refuse any range not wholly inside one RAM region (overflow-safe: the checks
never compute past ``gpa + length`` without bounding both).  Devices move data
with memoryviews from ``slice`` so ``os.preadv``/``os.pwritev`` touch guest RAM
directly, without a copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Sequence
from typing import Protocol

from stratovmm.errors import ConfigError, GuestMemoryError, HostError
from stratovmm.records import record

# <asm-generic/mman-common.h>, x86_64 (Python's mmap module names it from 3.13 only): do
# not reserve swap for the whole of guest RAM, as QEMU maps it.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@record(frozen=True, slots=True)
class Region:
    """``size`` bytes of guest RAM at guest address ``gpa``, at ``offset`` in the host buffer."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        """First guest address past the region."""
        return self.gpa + self.size


class GuestMemoryProtocol(Protocol):
    """What virtqueue and device code needs from guest memory: checked access, the RAM
    regions, and where each region is mapped in this process (vhost hands its kernel
    worker that table, virtio-balloon gives pages back region by region)."""

    size: int
    regions: tuple[Region, ...]

    def host_address(self, region: Region) -> int: ...
    def slice(self, gpa: int, length: int) -> memoryview: ...
    def read(self, gpa: int, length: int) -> bytes: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    def read_u16(self, gpa: int) -> int: ...
    def read_u32(self, gpa: int) -> int: ...
    def read_u64(self, gpa: int) -> int: ...
    def write_u16(self, gpa: int, value: int) -> None: ...
    def write_u32(self, gpa: int, value: int) -> None: ...
    def write_u64(self, gpa: int, value: int) -> None: ...
    def contains(self, gpa: int, length: int) -> bool: ...
    def discard(self, gpa: int, length: int) -> None: ...


class GuestMemory:
    """Checked access to guest RAM laid over one host buffer."""

    def __init__(self, buffer: bytearray | mmap.mmap, regions: Sequence[tuple[int, int]]) -> None:
        self._view = memoryview(buffer)
        placed: list[Region] = []
        offset = 0
        for gpa, size in regions:
            placed.append(Region(gpa, size, offset))
            offset += size
        if offset > len(self._view):
            raise ValueError("regions larger than the host buffer")
        self.regions: tuple[Region, ...] = tuple(placed)
        self.size = offset
        # the buffer cannot move: ``_view`` holds an export of it (a bytearray cannot be
        # resized, an mmap not closed, while it lives)
        self._host_base = (ctypes.addressof(ctypes.c_char.from_buffer(self._view)) if offset
                           else 0)
        # plain ints for the hot path: every descriptor and ring access checks here
        self._bounds = tuple((r.gpa, r.gpa + r.size, r.offset - r.gpa) for r in placed)

    def _offset(self, gpa: int, length: int) -> int:
        """Host buffer offset of [gpa, gpa+length), or ``GuestMemoryError``.

        Overflow-safe: the range must start inside a region and its length must
        fit in what is left of that region, so no sum can wrap or exceed RAM.  An
        empty range may start at a region's end (``length <= end - gpa`` is then 0).
        """
        if length >= 0:
            for start, end, delta in self._bounds:
                if start <= gpa <= end and length <= end - gpa:
                    return gpa + delta
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def host_address(self, region: Region) -> int:
        """Our virtual address of ``region``'s first byte (KVM memory slots, vhost's memory
        table)."""
        return self._host_base + region.offset

    def native_layout(self) -> tuple[memoryview, int, tuple[tuple[int, int, int], ...]] | None:
        """What C code walking guest RAM needs (``stratovmm.virtio.native``): a view that
        keeps the buffer mapped while the caller holds it (an mmap with an export cannot be
        closed), the host address of the buffer, and the regions as (guest start, guest
        end, delta), the host buffer offset of a guest address being ``gpa + delta`` — the
        bounds ``_offset`` checks every access against.  None when a subclass reaches guest
        RAM its own way (overrides an accessor): C must not go around it."""
        cls = type(self)
        if any(getattr(cls, name) is not getattr(GuestMemory, name) for name in _ACCESSORS):
            return None
        return self._view[:0], self._host_base, self._bounds

    def contains(self, gpa: int, length: int) -> bool:
        """True when [gpa, gpa+length) lies wholly inside one RAM region."""
        try:
            self._offset(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def slice(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest RAM [gpa, gpa+length): no copy."""
        offset = self._offset(gpa, length)
        return self._view[offset : offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        """A copy of guest RAM [gpa, gpa+length)."""
        return bytes(self.slice(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM at ``gpa``."""
        self.slice(gpa, len(data))[:] = data

    def read_u16(self, gpa: int) -> int:
        """Little-endian u16 at ``gpa``."""
        return int(_U16.unpack_from(self._view, self._offset(gpa, 2))[0])

    def read_u32(self, gpa: int) -> int:
        """Little-endian u32 at ``gpa``."""
        return int(_U32.unpack_from(self._view, self._offset(gpa, 4))[0])

    def read_u64(self, gpa: int) -> int:
        """Little-endian u64 at ``gpa``."""
        return int(_U64.unpack_from(self._view, self._offset(gpa, 8))[0])

    # The stores below copy packed bytes in: ``struct.pack_into`` zeroes its target before
    # packing, so a driver polling the field (used->idx, §2.7.8) could read a passing 0.

    def write_u16(self, gpa: int, value: int) -> None:
        """Store a little-endian u16 at ``gpa``."""
        self.write(gpa, _U16.pack(value))

    def write_u32(self, gpa: int, value: int) -> None:
        """Store a little-endian u32 at ``gpa``."""
        self.write(gpa, _U32.pack(value))

    def write_u64(self, gpa: int, value: int) -> None:
        """Store a little-endian u64 at ``gpa``."""
        self.write(gpa, _U64.pack(value))

    def discard(self, gpa: int, length: int) -> None:
        """Give [gpa, gpa+length) back: the guest reads zeros there afterwards."""
        self.slice(gpa, length)[:] = bytes(length)


# how guest RAM is reached: a subclass overriding one of these is not bypassed by C code
_ACCESSORS = ("_offset", "contains", "slice", "read", "write", "read_u16", "read_u32",
              "read_u64", "write_u16", "write_u32", "write_u64")


@record(frozen=True, slots=True)
class MemoryOptions:
    """How guest RAM is backed (-m, -mem-path, -machine mem-share, dump-guest-core)."""

    size: int
    mem_path: str | None = None
    shared: bool = False
    dump_guest_core: bool = True


class HostGuestMemory(GuestMemory):
    """Guest RAM in an mmap: anonymous, or a file / hugetlbfs file under ``mem_path``."""

    def __init__(self, options: MemoryOptions, regions: Sequence[tuple[int, int]]) -> None:
        self.options = options
        self._file_backed = options.mem_path is not None
        self._mmap = _map(options)
        if not options.dump_guest_core:
            self._mmap.madvise(mmap.MADV_DONTDUMP)
        if options.mem_path is None:
            # transparent huge pages where the host allows them (as QEMU does): fewer
            # page-table levels for the host MMU to walk on every guest access
            self._mmap.madvise(mmap.MADV_HUGEPAGE)
        super().__init__(self._mmap, regions)
    def discard(self, gpa: int, length: int) -> None:
        """Return whole pages to the host (virtio-balloon inflate).

        Private anonymous memory: ``MADV_DONTNEED`` drops the pages and later
        reads see zeros.  Shared or file-backed memory: ``MADV_REMOVE`` punches
        the hole in the backing object, since DONTNEED there only unmaps.
        """
        offset = self._offset(gpa, length)
        shared = self.options.shared or self._file_backed
        self._mmap.madvise(mmap.MADV_REMOVE if shared else mmap.MADV_DONTNEED, offset, length)

    def close(self) -> None:
        """Unmap guest RAM (all views must be gone)."""
        self._view.release()
        self._mmap.close()


def _map(options: MemoryOptions) -> mmap.mmap:
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    share = mmap.MAP_SHARED if options.shared else mmap.MAP_PRIVATE
    if options.mem_path is None:
        flags = share | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        try:
            return mmap.mmap(-1, options.size, flags=flags, prot=prot)
        except OSError as exc:
            raise HostError(
                f"cannot map {options.size} bytes of guest RAM: {exc.strerror}") from exc
    fd = _open_backing(options.mem_path, options.size)
    try:
        return mmap.mmap(fd, options.size, flags=share, prot=prot)
    except OSError as exc:
        raise ConfigError(f"-mem-path {options.mem_path}: cannot map: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _open_backing(path: str, size: int) -> int:
    """Open (a fresh unlinked file in) ``path`` and size it to ``size`` bytes."""
    try:
        if os.path.isdir(path):
            import tempfile  # only for a -mem-path directory (it brings shutil, bz2, lzma)

            fd, name = tempfile.mkstemp(prefix="stratovmm-ram-", dir=path)
            os.unlink(name)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"-mem-path {path}: {exc.strerror}") from exc
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise ConfigError(
            f"-mem-path {path}: cannot size the backing file to {size} bytes: {exc.strerror}"
            " (on hugetlbfs the size must be a multiple of the huge page size)"
        ) from exc
    return fd
