"""Synthetic kernel images for the parser and loader tests: ELF (32/64-bit, PVH note) and
bzImage setup headers, with every field a test may want to break reachable."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

PT_LOAD, PT_NOTE = 1, 4
EM_386, EM_X86_64 = 3, 62
XEN_ELFNOTE_PHYS32_ENTRY = 18

# e_phoff, e_phentsize, e_phnum offsets in the ELF header
PHOFF = {32: 0x1C, 64: 0x20}
PHENTSIZE = {32: 0x2A, 64: 0x36}
PHNUM = {32: 0x2C, 64: 0x38}
EHSIZE = {32: 52, 64: 64}
PHDR_SIZE = {32: 32, 64: 56}

LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
SETUP_HEADER_END = 0x26C      # boot.rst: the setup header runs 0x1F1..0x26B (protocol 2.15)


@dataclass(frozen=True)
class Seg:
    """One program header: ``data`` goes to ``paddr``; ``memsz`` defaults to ``len(data)``."""

    paddr: int
    data: bytes
    memsz: int | None = None
    p_type: int = PT_LOAD


def pvh_note(entry: int, descsz: int = 4, name: bytes = b"Xen\0",
             note_type: int = XEN_ELFNOTE_PHYS32_ENTRY) -> bytes:
    """An ELF note carrying ``XEN_ELFNOTE_PHYS32_ENTRY``."""
    desc = struct.pack("<I" if descsz == 4 else "<Q", entry)
    padded = name + bytes(-len(name) % 4)
    return struct.pack("<III", len(name), descsz, note_type) + padded + desc


def build_elf(segments: Sequence[Seg], entry: int, *, bits: int = 64,
              note: bytes | None = None, machine: int | None = None) -> bytes:
    """A little-endian x86 ELF executable with ``segments`` (and a PT_NOTE for ``note``)."""
    phdrs = list(segments) + ([Seg(0, note, p_type=PT_NOTE)] if note is not None else [])
    data_start = EHSIZE[bits] + PHDR_SIZE[bits] * len(phdrs)
    body = bytearray()
    table = bytearray()
    for seg in phdrs:
        offset = data_start + len(body)
        body += seg.data + bytes(-len(seg.data) % 16)
        memsz = len(seg.data) if seg.memsz is None else seg.memsz
        if bits == 64:
            table += struct.pack("<IIQQQQQQ", seg.p_type, 5, offset, seg.paddr, seg.paddr,
                                 len(seg.data), memsz, 16)
        else:
            table += struct.pack("<IIIIIIII", seg.p_type, offset, seg.paddr, seg.paddr,
                                 len(seg.data), memsz, 5, 16)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1]) + bytes(9)
    if bits == 64:
        ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine or EM_X86_64, 1, entry,
                           EHSIZE[64], 0, 0, EHSIZE[64], PHDR_SIZE[64], len(phdrs), 64, 0, 0)
    else:
        ehdr = struct.pack("<16sHHIIIIIHHHHHH", ident, 2, machine or EM_386, 1, entry,
                           EHSIZE[32], 0, 0, EHSIZE[32], PHDR_SIZE[32], len(phdrs), 40, 0, 0)
    return ehdr + bytes(table) + bytes(body)


def pvh_elf(code: bytes = b"\xf4" * 16, at: int = 0x100000, bss: int = 0) -> bytes:
    """A 32-bit PVH kernel: one segment at ``at`` (plus ``bss`` zero bytes), entry at ``at``."""
    return build_elf([Seg(at, code, len(code) + bss)], at, bits=32, note=pvh_note(at))


def build_bzimage(*, setup_sects: int = 4, version: int = 0x020F,
                  loadflags: int = LOADED_HIGH, xloadflags: int = XLF_KERNEL_64,
                  cmdline_size: int = 2047, init_size: int = 0x200000,
                  initrd_addr_max: int = 0x7FFFFFFF, header_len_byte: int | None = None,
                  payload: bytes = b"\x90" * 8192) -> bytes:
    """A bzImage: boot sector + setup sectors with the ``HdrS`` header, then the payload."""
    data = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    data[0x1F1] = setup_sects
    struct.pack_into("<H", data, 0x1FE, 0xAA55)
    data[0x200] = 0xEB                                   # jmp short over the header
    data[0x201] = SETUP_HEADER_END - 0x202 if header_len_byte is None else header_len_byte
    struct.pack_into("<I", data, 0x202, 0x53726448)      # "HdrS"
    struct.pack_into("<H", data, 0x206, version)
    data[0x211] = loadflags
    struct.pack_into("<I", data, 0x22C, initrd_addr_max)
    struct.pack_into("<H", data, 0x236, xloadflags)
    struct.pack_into("<I", data, 0x238, cmdline_size)
    struct.pack_into("<I", data, 0x260, init_size)
    return bytes(data) + payload
