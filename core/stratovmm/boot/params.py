"""Boot information the loader hands the kernel: e820 map, zero page, PVH start info.

Two protocols: the Linux boot protocol's ``struct boot_params`` (zero page,
layout from ``<asm/bootparam.h>`` through cffi), and the Xen PVH
``struct hvm_start_info`` (xen/include/public/arch-x86/hvm/start_info.h, version 1,
which carries the memory map) for ELF kernels with a PVH note.
"""

from __future__ import annotations

import struct

from stratovmm.boot import layout
from stratovmm.boot._bootparam import ffi, lib
from stratovmm.records import record

E820_RAM = 1
E820_RESERVED = 2

PVH_MAGIC = 0x336EC578
_START_INFO = struct.Struct("<IIIIQQQQII")       # hvm_start_info, 56 bytes
_MODLIST_ENTRY = struct.Struct("<QQQQ")          # hvm_modlist_entry, 32 bytes
_MEMMAP_ENTRY = struct.Struct("<QQII")           # hvm_memmap_table_entry, 24 bytes


@record(frozen=True, slots=True)
class E820Entry:
    """One e820 range."""

    addr: int
    size: int
    kind: int


def e820_map(mem_size: int) -> list[E820Entry]:
    """RAM below the EBDA, the EBDA/BIOS area reserved, RAM from 1 MiB, RAM above 4 GiB."""
    regions = layout.ram_regions(mem_size)
    low_end = regions[0][1]
    entries = [
        E820Entry(0, layout.LOW_RAM_END, E820_RAM),
        E820Entry(layout.LOW_RAM_END, layout.HIGH_RAM_START - layout.LOW_RAM_END, E820_RESERVED),
        E820Entry(layout.HIGH_RAM_START, low_end - layout.HIGH_RAM_START, E820_RAM),
    ]
    if len(regions) > 1:
        entries.append(E820Entry(regions[1][0], regions[1][1], E820_RAM))
    return entries


def zero_page(
    setup_header: bytes,
    e820: list[E820Entry],
    cmdline_addr: int,
    cmdline_size: int,
    initrd: tuple[int, int] | None,
) -> bytes:
    """``struct boot_params`` for the 64-bit Linux boot protocol (boot.rst, "64-bit BOOT PROTOCOL").

    ``setup_header`` is the header copied from a bzImage, or empty for an ELF
    kernel (then the fields a loader must fill are set from scratch).
    """
    buf = bytearray(ffi.sizeof("struct boot_params"))
    params = ffi.from_buffer("struct boot_params *", buf)
    hdr_offset = ffi.offsetof("struct boot_params", "hdr")
    buf[hdr_offset : hdr_offset + len(setup_header)] = setup_header
    hdr = params.hdr
    if not setup_header:
        hdr.boot_flag = 0xAA55
        hdr.header = 0x53726448
        hdr.kernel_alignment = 0x1000000
    hdr.type_of_loader = 0xFF          # "undefined" loader id
    hdr.vid_mode = 0xFFFF              # "normal"
    hdr.loadflags |= lib.CAN_USE_HEAP | lib.LOADED_HIGH
    hdr.heap_end_ptr = 0xFE00
    hdr.cmd_line_ptr = cmdline_addr
    hdr.cmdline_size = cmdline_size
    if initrd is not None:
        addr, size = initrd
        hdr.ramdisk_image = addr & 0xFFFFFFFF
        hdr.ramdisk_size = size & 0xFFFFFFFF
        params.ext_ramdisk_image = addr >> 32
        params.ext_ramdisk_size = size >> 32
    if len(e820) > lib.E820_MAX_ENTRIES_ZEROPAGE:
        raise ValueError("too many e820 entries")
    params.e820_entries = len(e820)
    for i, entry in enumerate(e820):
        params.e820_table[i].addr = entry.addr
        params.e820_table[i].size = entry.size
        params.e820_table[i].type = entry.kind
    return bytes(buf)


def pvh_start_info(
    base: int, e820: list[E820Entry], cmdline_addr: int, initrd: tuple[int, int] | None
) -> bytes:
    """``hvm_start_info`` v1 at ``base``, followed by its module list and memory map."""
    modlist_addr = base + _START_INFO.size
    nr_modules = 1 if initrd is not None else 0
    memmap_addr = modlist_addr + nr_modules * _MODLIST_ENTRY.size
    out = bytearray(
        _START_INFO.pack(
            PVH_MAGIC, 1, 0, nr_modules, modlist_addr if nr_modules else 0,
            cmdline_addr, 0, memmap_addr, len(e820), 0,
        )
    )
    if initrd is not None:
        out += _MODLIST_ENTRY.pack(initrd[0], initrd[1], 0, 0)
    for entry in e820:
        out += _MEMMAP_ENTRY.pack(entry.addr, entry.size, entry.kind, 0)
    return bytes(out)
