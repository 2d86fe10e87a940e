"""Walking one descriptor chain, with every check of virtio 1.2 §2.7.5 and §2.7.5.3,
and the helpers that cut a chain's buffers into iovecs.

A chain is validated whole before a device sees it: a device never acts on
half of a bad request.  ``ChainError`` (a ``GuestError``) means "this request is
bad": the queue completes it with length 0 and the device keeps running.

Devices move data with one ``readv``/``pwritev``/``recvmsg_into`` over memoryviews
of the guest's buffers; ``skip_views`` and ``trim_views`` cut such a list (past a
header, up to a length), ``scatter`` and ``gather`` copy between it and a host
buffer (a bounce buffer), ``DescriptorChain.write_all`` scatters host bytes into
the writable buffers at an offset, and ``DescriptorChain.trim_writable`` offers
fewer bytes than the driver gave (a rate limit).  Every device uses these; none
keeps its own slicing loop.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from stratovmm.errors import GuestError
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")
MAX_CHAIN_BYTES = 1 << 32       # total length must fit the used ring's u32
IOV_MAX = os.sysconf("SC_IOV_MAX")   # buffers one readv/recvmsg takes (Linux: 1024)


class ChainError(GuestError):
    """A descriptor chain breaks a rule of §2.7.5; the request is refused."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One buffer of a chain: ``length`` bytes at guest ``addr``; ``writable`` by the device."""

    addr: int
    length: int
    writable: bool


@dataclass(frozen=True, slots=True)
class DescriptorChain:
    """A validated chain: readable buffers first, then writable ones (§2.7.4.2).
    ``readable_len`` is the bytes the driver gave us, ``writable_len`` the bytes we may
    write back."""

    head: int
    readable: tuple[Descriptor, ...]
    writable: tuple[Descriptor, ...]
    # summed once, when the chain is made: a device asks for them several times a request
    readable_len: int = field(init=False, repr=False, compare=False)
    writable_len: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "readable_len", sum(d.length for d in self.readable))
        object.__setattr__(self, "writable_len", sum(d.length for d in self.writable))

    def read_views(self, memory: GuestMemoryProtocol) -> list[memoryview]:
        """Views of the readable buffers (zero-copy, for ``os.pwritev``)."""
        return [memory.slice(d.addr, d.length) for d in self.readable]

    def write_views(self, memory: GuestMemoryProtocol) -> list[memoryview]:
        """Views of the writable buffers (zero-copy, for ``os.preadv``)."""
        return [memory.slice(d.addr, d.length) for d in self.writable]

    def read_all(self, memory: GuestMemoryProtocol, limit: int) -> bytes:
        """Copy up to ``limit`` readable bytes (for small headers and control requests)."""
        if self.readable and self.readable[0].length >= limit:     # the usual framing
            return memory.read(self.readable[0].addr, limit)
        out = bytearray()
        for d in self.readable:
            if len(out) >= limit:
                break
            out += memory.read(d.addr, min(d.length, limit - len(out)))
        return bytes(out)

    def write_all(self, memory: GuestMemoryProtocol, data: bytes | memoryview,
                  offset: int = 0) -> int:
        """Scatter ``data`` over the writable buffers from byte ``offset`` of them (a status
        byte at the end, a header field); returns how many bytes fit."""
        done = 0
        for d in self.writable:
            if done >= len(data):
                break
            if offset >= d.length:
                offset -= d.length
                continue
            n = min(d.length - offset, len(data) - done)
            memory.write(d.addr + offset, data[done : done + n])
            done += n
            offset = 0
        return done

    def trim_writable(self, limit: int) -> DescriptorChain:
        """This chain offering at most ``limit`` writable bytes (same head): the device may
        fill less than the driver gave, e.g. what a rate limit grants (§2.7.8: the used
        length is what the device wrote)."""
        if self.writable_len <= limit:
            return self
        kept: list[Descriptor] = []
        for d in self.writable:
            if limit <= 0:
                break
            kept.append(Descriptor(d.addr, min(d.length, limit), True))
            limit -= kept[-1].length
        return DescriptorChain(self.head, self.readable, tuple(kept))


def skip_views(views: Sequence[memoryview], offset: int) -> list[memoryview]:
    """``views`` without their first ``offset`` bytes (past a header, past what a short
    write took); empty views are dropped."""
    if not offset:
        return [view for view in views if view]
    out = []
    for view in views:
        if offset >= len(view):
            offset -= len(view)
            continue
        out.append(view[offset:])
        offset = 0
    return out


def trim_views(views: Sequence[memoryview], limit: int) -> list[memoryview]:
    """The first ``limit`` bytes of ``views`` (a request cap, a credit window); empty views
    are dropped."""
    out = []
    for view in views:
        if limit <= 0:
            break
        if view:
            out.append(view[:limit])
            limit -= len(out[-1])
    return out


def read_descriptor(memory: GuestMemoryProtocol, table: int,
                    index: int) -> tuple[int, int, int, int]:
    """(addr, len, flags, next) of entry ``index`` of the table at ``table``."""
    return _DESC.unpack(memory.read(table + index * DESC_SIZE, DESC_SIZE))


def walk_chain(memory: GuestMemoryProtocol, desc_table: int, queue_size: int,
               head: int) -> DescriptorChain:
    """Follow the chain starting at ``head``; ``ChainError`` on any violation.

    Checks (virtio 1.2):
    - every index < the table's size (§2.7.5);
    - at most ``queue_size`` descriptors, so a ``next`` loop ends (§2.7.5.2: "The driver
      MUST NOT create a descriptor chain longer than the Queue Size");
    - every buffer inside guest RAM, checked overflow-safe by ``GuestMemory``, empty ones
      included (as rust-vmm's ``Reader``/``Writer`` refuse a descriptor whose address is in
      no memory region, whatever its length);
    - no readable descriptor after a writable one (§2.7.4.2);
    - total length < 2^32 (the used ring's ``len`` is 32 bits);
    - an indirect descriptor has no NEXT, is not itself inside an indirect table, and
      its length is a non-zero multiple of 16 with at most ``queue_size`` entries
      (§2.7.5.3.1).
    """
    readable: list[Descriptor] = []
    writable: list[Descriptor] = []
    table, table_size, index = desc_table, queue_size, head
    in_indirect = False
    steps = 0
    total = 0
    while True:
        if index >= table_size:
            raise ChainError(f"descriptor index {index} >= table size {table_size} (§2.7.5)")
        steps += 1
        if steps > queue_size:
            raise ChainError(f"chain longer than the queue size {queue_size} (loop?) (§2.7.5.2)")
        try:
            addr, length, flags, next_index = read_descriptor(memory, table, index)
        except GuestError as exc:
            raise ChainError(f"descriptor table outside guest RAM: {exc}") from None
        if flags & DESC_F_INDIRECT:
            if in_indirect:
                raise ChainError("indirect descriptor inside an indirect table (§2.7.5.3.1)")
            if flags & DESC_F_NEXT:
                raise ChainError("indirect descriptor with NEXT set (§2.7.5.3.1)")
            if length == 0 or length % 16 or length // 16 > queue_size:
                raise ChainError(f"indirect table length {length} is not 16·n, 0 < n <= "
                                 f"{queue_size} (§2.7.5.3.1)")
            if not memory.contains(addr, length):
                raise ChainError(f"indirect table {addr:#x}+{length:#x} outside guest RAM")
            table, table_size, index = addr, length // 16, 0
            in_indirect = True
            steps = 0
            continue
        if not memory.contains(addr, length):
            # even an empty buffer: ``addr`` is a guest-physical address (§2.7.5), and a
            # device must be able to take a view of every buffer of a chain it accepted
            raise ChainError(f"buffer {addr:#x}+{length:#x} outside guest RAM (§2.7.5)")
        total += length
        if total >= MAX_CHAIN_BYTES:
            raise ChainError("chain total length >= 2^32")
        if flags & DESC_F_WRITE:
            writable.append(Descriptor(addr, length, True))
        elif writable:
            raise ChainError("readable descriptor after a writable one (§2.7.4.2)")
        else:
            readable.append(Descriptor(addr, length, False))
        if not flags & DESC_F_NEXT:
            return DescriptorChain(head, tuple(readable), tuple(writable))
        index = next_index


def scatter(views: Sequence[memoryview], data: bytes | memoryview, offset: int = 0) -> int:
    """Copy ``data`` into ``views`` from byte ``offset`` of them (a bounce buffer back into
    guest buffers); returns the bytes copied."""
    done = 0
    for view in skip_views(views, offset):
        n = min(len(view), len(data) - done)
        if n <= 0:
            break
        view[:n] = data[done : done + n]
        done += n
    return done


def gather(views: Sequence[memoryview], out: memoryview, offset: int = 0) -> int:
    """Fill ``out`` from ``views`` starting at byte ``offset`` of them (guest buffers into a
    bounce buffer); returns the bytes copied."""
    done = 0
    for view in skip_views(views, offset):
        n = min(len(view), len(out) - done)
        if n <= 0:
            break
        out[done : done + n] = view[:n]
        done += n
    return done
