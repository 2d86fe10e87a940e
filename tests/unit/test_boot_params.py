"""The e820 map, the zero page (``struct boot_params``) and the PVH start info, read back
at the offsets the boot protocols document (not through the bindings that wrote them)."""

from __future__ import annotations

import itertools
import struct

import pytest

from stratovmm.boot import layout, params
from stratovmm.boot.params import E820_RAM, E820_RESERVED, E820Entry

MiB, GiB = 1 << 20, 1 << 30

# Documentation/x86/zero-page.rst and boot.rst
ZP_EXT_RAMDISK_IMAGE = 0x0C0
ZP_EXT_RAMDISK_SIZE = 0x0C4
ZP_E820_ENTRIES = 0x1E8
ZP_BOOT_FLAG = 0x1FE
ZP_HEADER = 0x202
ZP_VERSION = 0x206
ZP_VID_MODE = 0x1FA
ZP_TYPE_OF_LOADER = 0x210
ZP_LOADFLAGS = 0x211
ZP_RAMDISK_IMAGE = 0x218
ZP_RAMDISK_SIZE = 0x21C
ZP_HEAP_END_PTR = 0x224
ZP_CMD_LINE_PTR = 0x228
ZP_KERNEL_ALIGNMENT = 0x230
ZP_CMDLINE_SIZE = 0x238
ZP_E820_TABLE = 0x2D0
ZERO_PAGE_SIZE = 4096
LOADED_HIGH, CAN_USE_HEAP = 0x01, 0x80


def u8(buf: bytes, off: int) -> int:
    """Byte at ``off``."""
    return buf[off]


def u16(buf: bytes, off: int) -> int:
    """Little-endian u16 at ``off``."""
    return int(struct.unpack_from("<H", buf, off)[0])


def u32(buf: bytes, off: int) -> int:
    """Little-endian u32 at ``off``."""
    return int(struct.unpack_from("<I", buf, off)[0])


def e820_of(zero: bytes) -> list[E820Entry]:
    """The e820 table as the kernel reads it from the zero page."""
    return [E820Entry(*struct.unpack_from("<QQI", zero, ZP_E820_TABLE + 20 * i))
            for i in range(u8(zero, ZP_E820_ENTRIES))]


@pytest.mark.parametrize("mem", [256 * MiB, 512 * MiB, 3 * GiB, 3328 * MiB, 4 * GiB, 512 * GiB])
def test_e820_layout(mem: int) -> None:
    """RAM below the EBDA, EBDA..1M reserved, RAM from 1M, the MMIO hole skipped, rest at 4G."""
    entries = params.e820_map(mem)
    assert entries[0] == E820Entry(0, layout.EBDA_START, E820_RAM)
    assert entries[1] == E820Entry(layout.EBDA_START, 0x100000 - layout.EBDA_START,
                                   E820_RESERVED)
    low = min(mem, layout.MMIO_HOLE_START)
    assert entries[2] == E820Entry(0x100000, low - 0x100000, E820_RAM)
    if mem > layout.MMIO_HOLE_START:
        assert entries[3] == E820Entry(4 * GiB, mem - layout.MMIO_HOLE_START, E820_RAM)
        assert len(entries) == 4
    else:
        assert len(entries) == 3
    ram = sum(e.size for e in entries if e.kind == E820_RAM)
    assert ram == mem - (0x100000 - layout.EBDA_START)
    for a, b in itertools.pairwise(entries):
        assert a.addr + a.size <= b.addr, "sorted and disjoint"
    for e in entries:
        assert not (e.addr < layout.MMIO_HOLE_END and e.addr + e.size > layout.MMIO_HOLE_START), \
            "nothing in the MMIO hole"


def test_ram_regions_skip_the_hole() -> None:
    """Guest RAM regions stop at 0xD000_0000 and continue at 4 GiB."""
    assert layout.ram_regions(256 * MiB) == [(0, 256 * MiB)]
    assert layout.ram_regions(4 * GiB) == [(0, 0xD000_0000), (4 * GiB, 4 * GiB - 0xD000_0000)]


def test_zero_page_for_elf_kernel() -> None:
    """Without a bzImage header the loader fills the fields a kernel checks itself."""
    e820 = params.e820_map(512 * MiB)
    zero = params.zero_page(b"", e820, layout.CMDLINE_ADDR, 2047, (0x1F000000, 0x123456))
    assert len(zero) == ZERO_PAGE_SIZE
    assert u16(zero, ZP_BOOT_FLAG) == 0xAA55
    assert zero[ZP_HEADER:ZP_HEADER + 4] == b"HdrS"
    assert u32(zero, ZP_KERNEL_ALIGNMENT) == 0x1000000
    assert u8(zero, ZP_TYPE_OF_LOADER) == 0xFF
    assert u16(zero, ZP_VID_MODE) == 0xFFFF
    assert u8(zero, ZP_LOADFLAGS) & (LOADED_HIGH | CAN_USE_HEAP) == LOADED_HIGH | CAN_USE_HEAP
    assert u16(zero, ZP_HEAP_END_PTR) == 0xFE00
    assert u32(zero, ZP_CMD_LINE_PTR) == layout.CMDLINE_ADDR
    assert u32(zero, ZP_CMDLINE_SIZE) == 2047
    assert (u32(zero, ZP_RAMDISK_IMAGE), u32(zero, ZP_RAMDISK_SIZE)) == (0x1F000000, 0x123456)
    assert (u32(zero, ZP_EXT_RAMDISK_IMAGE), u32(zero, ZP_EXT_RAMDISK_SIZE)) == (0, 0)
    assert e820_of(zero) == e820


def test_zero_page_keeps_bzimage_header() -> None:
    """A bzImage's setup header is copied at 0x1F1 and only the loader's fields change."""
    header = bytearray(0x26C - 0x1F1)
    header[0] = 27                                            # setup_sects
    struct.pack_into("<H", header, ZP_BOOT_FLAG - 0x1F1, 0xAA55)
    header[ZP_HEADER - 0x1F1:ZP_HEADER - 0x1F1 + 4] = b"HdrS"
    struct.pack_into("<H", header, ZP_VERSION - 0x1F1, 0x020F)
    struct.pack_into("<I", header, ZP_KERNEL_ALIGNMENT - 0x1F1, 0x200000)
    header[ZP_LOADFLAGS - 0x1F1] = LOADED_HIGH
    zero = params.zero_page(bytes(header), params.e820_map(256 * MiB), 0x20000, 255, None)
    assert zero[0x1F1] == 27
    assert u16(zero, ZP_VERSION) == 0x020F
    assert u32(zero, ZP_KERNEL_ALIGNMENT) == 0x200000, "the kernel's own alignment is kept"
    assert u8(zero, ZP_LOADFLAGS) == LOADED_HIGH | CAN_USE_HEAP
    assert u8(zero, ZP_TYPE_OF_LOADER) == 0xFF
    assert (u32(zero, ZP_RAMDISK_IMAGE), u32(zero, ZP_RAMDISK_SIZE)) == (0, 0)
    assert u32(zero, ZP_CMDLINE_SIZE) == 255


def test_zero_page_initrd_above_4g() -> None:
    """An initrd address or size beyond 32 bits spills into ext_ramdisk_image/size."""
    zero = params.zero_page(b"", params.e820_map(8 * GiB), 0x20000, 2047,
                            (0x1_2345_6000, 0x1_0000_0010))
    assert u32(zero, ZP_RAMDISK_IMAGE) == 0x2345_6000
    assert u32(zero, ZP_EXT_RAMDISK_IMAGE) == 1
    assert u32(zero, ZP_RAMDISK_SIZE) == 0x10
    assert u32(zero, ZP_EXT_RAMDISK_SIZE) == 1


def test_zero_page_e820_limit() -> None:
    """More e820 entries than the zero page holds (128) is an error, not an overflow."""
    entries = [E820Entry(i * 0x1000, 0x1000, E820_RAM) for i in range(129)]
    with pytest.raises(ValueError, match="too many e820 entries"):
        params.zero_page(b"", entries, 0x20000, 2047, None)
    assert u8(params.zero_page(b"", entries[:128], 0x20000, 2047, None), ZP_E820_ENTRIES) == 128


def test_pvh_start_info() -> None:
    """hvm_start_info v1: magic, module list for the initrd, cmdline, memory map after it."""
    base = layout.PVH_INFO_ADDR
    e820 = params.e820_map(4 * GiB)
    info = params.pvh_start_info(base, e820, layout.CMDLINE_ADDR, (0x0800_0000, 0x4321))
    (magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, memmap_entries,
     reserved) = struct.unpack_from("<IIIIQQQQII", info)
    assert (magic, version, flags, nr_modules) == (0x336EC578, 1, 0, 1)
    assert (cmdline, rsdp, reserved) == (layout.CMDLINE_ADDR, 0, 0)
    assert modlist == base + 56
    assert struct.unpack_from("<QQQQ", info, modlist - base) == (0x0800_0000, 0x4321, 0, 0)
    assert memmap == modlist + 32
    assert memmap_entries == len(e820)
    table = [struct.unpack_from("<QQII", info, memmap - base + 24 * i) for i in range(len(e820))]
    assert [(a, s, t) for a, s, t, _ in table] == [(e.addr, e.size, e.kind) for e in e820]
    assert len(info) == 56 + 32 + 24 * len(e820)
    assert base + len(info) <= layout.ZERO_PAGE_ADDR, "fits below the zero page"


def test_pvh_start_info_without_initrd() -> None:
    """No initrd: no modules, a null module list, the memory map right after the header."""
    info = params.pvh_start_info(0x6000, params.e820_map(256 * MiB), 0x20000, None)
    _, _, _, nr_modules, modlist, _, _, memmap, entries, _ = struct.unpack_from("<IIIIQQQQII",
                                                                                info)
    assert (nr_modules, modlist, memmap, entries) == (0, 0, 0x6000 + 56, 3)


def test_low_memory_layout_does_not_overlap() -> None:
    """The loader's low structures sit below the command line area and do not overlap."""
    areas = sorted([
        (layout.GDT_ADDR, layout.GDT_ADDR + 4 * 8),
        (layout.IDT_ADDR, layout.IDT_ADDR + 8),
        (layout.PVH_INFO_ADDR, layout.ZERO_PAGE_ADDR),
        (layout.ZERO_PAGE_ADDR, layout.ZERO_PAGE_ADDR + ZERO_PAGE_SIZE),
        (layout.PML4_ADDR, layout.PD_ADDR + 4 * 4096),
        (layout.CMDLINE_ADDR, layout.CMDLINE_ADDR + layout.CMDLINE_MAX),
    ])
    for (_, end), (start, _) in itertools.pairwise(areas):
        assert end <= start
    assert layout.BOOT_STACK_ADDR < layout.PML4_ADDR
    assert areas[-1][1] <= layout.EBDA_START
