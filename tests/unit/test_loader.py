"""The loader on a bytearray guest memory: segments where the ELF says, bss zeroed, the
boot structures written, the initrd placed high, and unsafe images refused."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from boot_images import Seg, build_bzimage, build_elf, pvh_elf, pvh_note

from stratovmm.boot import layout, mptable
from stratovmm.boot.cmdline import Cmdline
from stratovmm.boot.loader import (
    BZIMAGE_DECOMPRESS_AT,
    ELF_CMDLINE_LIMIT,
    check_boot_files,
    load_kernel,
)
from stratovmm.errors import ConfigError, KernelImageError
from stratovmm.memory import GuestMemory
from stratovmm.testing.guest import guest_dir

MiB = 1 << 20
RAM = 64 * MiB


@pytest.fixture
def memory() -> GuestMemory:
    """64 MiB of guest RAM in a bytearray."""
    return GuestMemory(bytearray(RAM), [(0, RAM)])


def write(tmp_path: Path, name: str, data: bytes) -> str:
    """Write ``data`` to ``tmp_path/name``."""
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_pvh_elf_loaded(memory: GuestMemory, tmp_path: Path) -> None:
    """A PVH ELF: bytes at paddr, bss zeroed, 32-bit entry at the note, start info in %ebx."""
    code = bytes(range(1, 33))
    kernel = write(tmp_path, "k.elf", build_elf([Seg(0x200000, code, 0x1000)], 0x200000,
                                                bits=32, note=pvh_note(0x200004)))
    memory.write(0x200000, b"\xaa" * 0x2000)      # so that zeroing the bss is visible
    entry = load_kernel(memory, kernel, Cmdline("console=ttyS0"), 1)
    assert (entry.long_mode, entry.rip, entry.boot_info) == (False, 0x200004,
                                                              layout.PVH_INFO_ADDR)
    assert memory.read(0x200000, 32) == code
    assert memory.read(0x200020, 0x1000 - 32) == bytes(0x1000 - 32)
    assert memory.read(0x201000, 4) == b"\xaa" * 4, "nothing written past memsz"
    assert memory.read_u32(layout.PVH_INFO_ADDR) == 0x336EC578
    cmdline_ptr = struct.unpack_from("<Q", memory.read(layout.PVH_INFO_ADDR + 24, 8))[0]
    assert memory.read(cmdline_ptr, 14) == b"console=ttyS0\0"
    assert memory.read(layout.EBDA_START, 4) == b"_MP_"


def test_64bit_elf_uses_zero_page(memory: GuestMemory, tmp_path: Path) -> None:
    """A 64-bit ELF without a PVH note: long mode at e_entry, zero page in %rsi, page tables."""
    kernel = write(tmp_path, "k.elf", build_elf([Seg(0x1000000, b"\x90" * 64)], 0x1000000))
    entry = load_kernel(memory, kernel, Cmdline("quiet"), 2)
    assert (entry.long_mode, entry.rip, entry.boot_info) == (True, 0x1000000,
                                                              layout.ZERO_PAGE_ADDR)
    assert memory.read(layout.ZERO_PAGE_ADDR + 0x202, 4) == b"HdrS"
    assert memory.read_u32(layout.ZERO_PAGE_ADDR + 0x228) == layout.CMDLINE_ADDR
    assert memory.read_u32(layout.ZERO_PAGE_ADDR + 0x238) == ELF_CMDLINE_LIMIT
    assert memory.read(layout.CMDLINE_ADDR, 6) == b"quiet\0"
    assert memory.read_u64(layout.PML4_ADDR) & ~0xFFF == layout.PDPT_ADDR
    assert memory.read(layout.EBDA_START, mptable.mptable_size(2)) == mptable.build_mptable(2)


def test_initrd_placed_high_and_aligned(memory: GuestMemory, tmp_path: Path) -> None:
    """The initrd goes to the top of RAM, page-aligned, above the kernel, byte for byte."""
    blob = bytes(range(256)) * 40 + b"tail"
    kernel = write(tmp_path, "k.elf", pvh_elf())
    initrd = write(tmp_path, "initrd", blob)
    load_kernel(memory, kernel, Cmdline(), 1, initrd)
    _, _, _, nr_modules, modlist = struct.unpack_from(
        "<IIIIQ", memory.read(layout.PVH_INFO_ADDR, 24))
    assert nr_modules == 1
    addr, size = struct.unpack_from("<QQ", memory.read(modlist, 16))
    assert size == len(blob)
    assert addr % layout.PAGE_SIZE == 0
    assert RAM - layout.PAGE_SIZE < addr + size <= RAM
    assert memory.read(addr, size) == blob


def test_initrd_in_zero_page(memory: GuestMemory, tmp_path: Path) -> None:
    """For a zero-page boot the initrd address and size land in the setup header."""
    kernel = write(tmp_path, "k.elf", build_elf([Seg(0x1000000, b"\x90")], 0x1000000))
    initrd = write(tmp_path, "initrd", b"x" * 5000)
    load_kernel(memory, kernel, Cmdline(), 1, initrd)
    image = memory.read_u32(layout.ZERO_PAGE_ADDR + 0x218)
    assert memory.read_u32(layout.ZERO_PAGE_ADDR + 0x21C) == 5000
    assert memory.read(image, 5000) == b"x" * 5000


def test_initrd_does_not_fit(memory: GuestMemory, tmp_path: Path) -> None:
    """An initrd that would overlap the kernel is refused, naming -initrd."""
    kernel = write(tmp_path, "k.elf", build_elf([Seg(0x1000000, b"\x90", 40 * MiB)], 0x1000000))
    initrd = write(tmp_path, "initrd", bytes(30 * MiB))
    with pytest.raises(KernelImageError, match=r"-initrd .*do not fit in guest RAM"):
        load_kernel(memory, kernel, Cmdline(), 1, initrd)


def test_empty_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    """An empty initrd is refused."""
    with pytest.raises(KernelImageError, match="-initrd"):
        load_kernel(memory, write(tmp_path, "k", pvh_elf()), Cmdline(), 1,
                    write(tmp_path, "i", b""))


@pytest.mark.parametrize("paddr", [RAM, RAM - 8, 0xD000_0000, 1 << 40])
def test_segment_outside_ram(memory: GuestMemory, tmp_path: Path, paddr: int) -> None:
    """A segment not wholly inside guest RAM is refused before anything is written there."""
    kernel = write(tmp_path, "k.elf", build_elf([Seg(paddr, bytes(16))], paddr,
                                                note=pvh_note(paddr, descsz=8)))
    with pytest.raises(KernelImageError, match="is outside guest RAM"):
        load_kernel(memory, kernel, Cmdline(), 1)


@pytest.mark.parametrize(("paddr", "memsz"), [
    (0x0, 0x100),                       # real-mode IVT / GDT
    (0x7000, 0x10),                     # the zero page
    (0x1F000, 0x2000),                  # runs into the command line
    (layout.CMDLINE_ADDR + layout.CMDLINE_MAX - 1, 0x10),
    (layout.EBDA_START, 0x10),          # the MP table
    (0x90000, 0x10000),                 # bss reaching into the MP table
])
def test_segment_over_loader_structures(memory: GuestMemory, tmp_path: Path, paddr: int,
                                        memsz: int) -> None:
    """A segment (or its bss) overlapping the loader's low structures is refused."""
    kernel = write(tmp_path, "k.elf", build_elf([Seg(paddr, b"\xf4", memsz)], paddr, bits=32,
                                                note=pvh_note(paddr)))
    with pytest.raises(KernelImageError, match="overlaps the boot structures"):
        load_kernel(memory, kernel, Cmdline(), 1)


def test_segment_just_above_loader_structures(memory: GuestMemory, tmp_path: Path) -> None:
    """Free low memory between the command line area and the EBDA may hold a segment."""
    start = layout.CMDLINE_ADDR + layout.CMDLINE_MAX
    kernel = write(tmp_path, "k.elf", build_elf([Seg(start, b"\xf4")], start, bits=32,
                                                note=pvh_note(start)))
    assert load_kernel(memory, kernel, Cmdline(), 1).rip == start


def test_elf_cmdline_limit(memory: GuestMemory, tmp_path: Path) -> None:
    """An ELF kernel gets at most 2047 bytes of command line (x86 COMMAND_LINE_SIZE - 1)."""
    kernel = write(tmp_path, "k.elf", pvh_elf())
    load_kernel(memory, kernel, Cmdline("x" * ELF_CMDLINE_LIMIT), 1)
    with pytest.raises(ConfigError, match="-append: kernel command line is 2048 bytes"):
        load_kernel(memory, kernel, Cmdline("x" * (ELF_CMDLINE_LIMIT + 1)), 1)


def test_bzimage_loaded(memory: GuestMemory, tmp_path: Path) -> None:
    """A bzImage: protected-mode kernel at 1 MiB, entry +0x200, header in the zero page."""
    payload = bytes(range(256)) * 32
    kernel = write(tmp_path, "bz", build_bzimage(payload=payload, cmdline_size=100))
    entry = load_kernel(memory, kernel, Cmdline("a b"), 1)
    assert (entry.long_mode, entry.rip, entry.boot_info) == (True, 0x100200,
                                                              layout.ZERO_PAGE_ADDR)
    assert memory.read(0x100000, len(payload)) == payload
    zero = memory.read(layout.ZERO_PAGE_ADDR, 4096)
    assert zero[0x1F1] == 4 and zero[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<I", zero, 0x238)[0] == 100


def test_bzimage_cmdline_size_enforced(memory: GuestMemory, tmp_path: Path) -> None:
    """The bzImage's own cmdline_size is the limit."""
    kernel = write(tmp_path, "bz", build_bzimage(cmdline_size=10))
    with pytest.raises(ConfigError, match="the kernel accepts 10"):
        load_kernel(memory, kernel, Cmdline("0123456789a"), 1)


def test_bzimage_too_big_for_ram(memory: GuestMemory, tmp_path: Path) -> None:
    """A bzImage whose decompressed size does not fit in RAM is refused."""
    kernel = write(tmp_path, "bz", build_bzimage(init_size=RAM - BZIMAGE_DECOMPRESS_AT + 1))
    with pytest.raises(KernelImageError, match="does not fit in guest RAM"):
        load_kernel(memory, kernel, Cmdline(), 1)


def test_bzimage_initrd_below_initrd_addr_max(memory: GuestMemory, tmp_path: Path) -> None:
    """The initrd ends below the kernel's initrd_addr_max."""
    kernel = write(tmp_path, "bz", build_bzimage(initrd_addr_max=48 * MiB - 1))
    initrd = write(tmp_path, "i", b"z" * 10000)
    load_kernel(memory, kernel, Cmdline(), 1, initrd)
    image = memory.read_u32(layout.ZERO_PAGE_ADDR + 0x218)
    assert image + 10000 <= 48 * MiB
    assert image >= BZIMAGE_DECOMPRESS_AT + 0x200000


def test_not_a_kernel(memory: GuestMemory, tmp_path: Path) -> None:
    """Neither ELF nor bzImage: refused by name."""
    with pytest.raises(KernelImageError, match="not a bzImage or an ELF vmlinux"):
        load_kernel(memory, write(tmp_path, "k", b"#!/bin/sh\n" * 500), Cmdline(), 1)


def test_check_boot_files(tmp_path: Path) -> None:
    """The pre-flight check accepts a kernel and initrd, and refuses missing or odd files."""
    kernel = write(tmp_path, "k", pvh_elf())
    initrd = write(tmp_path, "i", b"data")
    check_boot_files(kernel, initrd)
    check_boot_files(kernel, None)
    with pytest.raises(KernelImageError, match=r"-initrd .*No such file"):
        check_boot_files(kernel, str(tmp_path / "missing"))
    with pytest.raises(KernelImageError, match=r"-initrd .*not a regular file"):
        check_boot_files(kernel, str(tmp_path))
    with pytest.raises(KernelImageError, match="-kernel /dev/null: not a regular file"):
        check_boot_files("/dev/null", None)
    with pytest.raises(KernelImageError, match=r"-kernel .*not a bzImage"):
        check_boot_files(initrd, None)


def test_real_vmlinux_and_initramfs(memory: GuestMemory) -> None:
    """The shared guest's vmlinux loads with its PVH entry and the initramfs above it."""
    directory = guest_dir()
    if directory is None or not (directory / "initramfs.cpio").exists():
        pytest.skip("STRATOVMM_GUEST_DIR not set")
    entry = load_kernel(memory, str(directory / "vmlinux"), Cmdline("console=ttyS0"), 2,
                        str(directory / "initramfs.cpio"))
    assert not entry.long_mode and entry.rip != 0
    _, _, _, nr_modules, modlist = struct.unpack_from(
        "<IIIIQ", memory.read(layout.PVH_INFO_ADDR, 24))
    addr, size = struct.unpack_from("<QQ", memory.read(modlist, 16))
    assert nr_modules == 1 and size == (directory / "initramfs.cpio").stat().st_size
    assert memory.read(addr, 6) == b"070701", "cpio newc magic where the module points"


def test_real_bzimage(memory: GuestMemory) -> None:
    """The shared guest's bzImage loads at 1 MiB with its setup header in the zero page."""
    directory = guest_dir()
    if directory is None or not (directory / "bzImage").exists():
        pytest.skip("no bzImage in $STRATOVMM_GUEST_DIR")
    entry = load_kernel(memory, str(directory / "bzImage"), Cmdline("console=ttyS0"), 1)
    assert entry.long_mode and entry.rip == 0x100200
    assert memory.read(layout.ZERO_PAGE_ADDR + 0x202, 4) == b"HdrS"


@pytest.mark.parametrize("kind", ["elf", "bzimage"])
def test_kernel_goes_to_guest_ram_without_passing_through_the_heap(
        memory: GuestMemory, tmp_path: Path, kind: str) -> None:
    """An 8 MiB kernel is checked and loaded with well under 1 MiB of Python allocations:
    it is parsed from a mapping and copied file → guest RAM, never held as ``bytes``."""
    body = bytes(range(256)) * (8 * MiB // 256)
    if kind == "elf":
        image, at = build_elf([Seg(0x1000000, body)], 0x1000000), 0x1000000
    else:
        image, at = build_bzimage(payload=body), layout.HIGH_RAM_START
    kernel = write(tmp_path, "k", image)
    tracemalloc.start()
    try:
        check_boot_files(kernel, None)
        load_kernel(memory, kernel, Cmdline(), 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB
    assert memory.read(at, len(body)) == body
