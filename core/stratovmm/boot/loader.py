"""Put a kernel, an initrd, a command line and the boot structures into guest RAM.

``load_kernel`` picks the protocol from the file: an ELF ``vmlinux`` with a PVH
note is entered in 32-bit mode at the note's address; any other ELF vmlinux
and every bzImage are entered in 64-bit mode with a zero page.  The result says
where and how the boot vCPU starts; ``cpu.py`` turns that into registers.

The kernel file is never read whole into the VMM's heap: the parsers see a
read-only mapping of it (only the header pages they look at become resident)
and its loadable parts go straight from the file into guest RAM with
``preadv``, as the initrd does.  A vmlinux is some 16 MiB; read into a
``bytes`` object, twice (the pre-flight check and the load), it stayed in the
heap after being freed (glibc raises its mmap threshold to the size of a freed
mapping, so the second read came from the heap, which is not trimmed below
twice that threshold) and was a third of the VMM's own memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Iterator

from stratovmm.boot import cpu, layout, mptable, params
from stratovmm.boot.bzimage import BzImage, looks_like_bzimage, parse_bzimage
from stratovmm.boot.cmdline import Cmdline
from stratovmm.boot.elf import ElfKernel, looks_like_elf, parse_elf
from stratovmm.errors import KernelImageError
from stratovmm.memory import GuestMemory
from stratovmm.records import record

BZIMAGE_DECOMPRESS_AT = 16 * layout.MiB   # CONFIG_PHYSICAL_START of x86_64 kernels
# An ELF vmlinux has no setup header to say how long a command line it takes; x86 Linux
# copies at most COMMAND_LINE_SIZE (2048) bytes including the NUL and silently drops the
# rest (with the virtio_mmio.device= words the loader appends last), so refuse longer.
ELF_CMDLINE_LIMIT = 2047


@record(frozen=True)
class BootEntry:
    """How the boot vCPU starts: mode, instruction pointer, and the boot info pointer."""

    long_mode: bool
    rip: int
    boot_info: int      # %rsi (zero page) in 64-bit mode, %ebx (start info) for PVH
    stack: int = layout.BOOT_STACK_ADDR


def parse_kernel(data: bytes | mmap.mmap, path: str) -> ElfKernel | BzImage:
    """The parsed kernel image, whichever of the two formats it is."""
    if looks_like_elf(data):
        return parse_elf(data, f"-kernel {path}")
    if looks_like_bzimage(data):
        return parse_bzimage(data, f"-kernel {path}")
    raise KernelImageError(f"-kernel {path}: not a bzImage or an ELF vmlinux")


def check_boot_files(kernel_path: str, initrd_path: str | None) -> None:
    """Refuse a missing, unreadable or unbootable kernel, or a missing initrd, before any
    host resource (KVM, guest RAM) is taken, so the user sees the file's problem first."""
    with _kernel_file(kernel_path) as (_fd, data):
        parse_kernel(data, kernel_path)
    if initrd_path is not None:
        os.close(_open_regular(initrd_path, "-initrd"))


def _open_regular(path: str, option: str) -> int:
    """An fd of ``path`` opened for reading; a directory or device is refused (a kernel
    read from /dev/zero would never end, a directory fails only deep in the loader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelImageError(f"{option} {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KernelImageError(f"{option} {path}: not a regular file")
    return fd


@contextlib.contextmanager
def _kernel_file(path: str) -> Iterator[tuple[int, bytes | mmap.mmap]]:
    """The kernel's fd and a read-only mapping of it for the parsers (``b""`` for an empty
    file, which cannot be mapped); both closed on leaving."""
    fd = _open_regular(path, "-kernel")
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            yield fd, b""
            return
        try:
            data = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except OSError as exc:
            raise KernelImageError(f"-kernel {path}: {exc.strerror}") from exc
        try:
            yield fd, data
        finally:
            data.close()
    finally:
        os.close(fd)


def _copy_in(memory: GuestMemory, fd: int, offset: int, gpa: int, length: int,
             what: str) -> None:
    """``length`` bytes of the file at ``offset`` into guest RAM at ``gpa`` (checked
    against RAM by ``memory.slice``), without passing through the VMM's heap."""
    view = memory.slice(gpa, length)
    done = 0
    while done < length:
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise KernelImageError(f"{what}: {exc.strerror}") from exc
        if n <= 0:
            raise KernelImageError(f"{what}: file shrank while reading")
        done += n


def load_kernel(
    memory: GuestMemory,
    kernel_path: str,
    cmdline: Cmdline,
    vcpus: int,
    initrd_path: str | None = None,
) -> BootEntry:
    """Load everything the guest needs to boot and return its entry state."""
    ram_end = memory.regions[0].end
    with _kernel_file(kernel_path) as (fd, data):
        image = parse_kernel(data, kernel_path)
        elf: ElfKernel | None = None
        if isinstance(image, ElfKernel):
            elf = image
            _load_elf(memory, fd, elf, kernel_path, _loader_ranges(vcpus))
            kernel_end, header, cmdline_limit = elf.end, b"", ELF_CMDLINE_LIMIT
            initrd_max = ram_end
        else:
            bz = image
            kernel_end = max(layout.HIGH_RAM_START + bz.kernel_size,
                             BZIMAGE_DECOMPRESS_AT + bz.init_size)
            if kernel_end > ram_end:
                raise KernelImageError(f"-kernel {kernel_path}: kernel does not fit in guest RAM")
            _copy_in(memory, fd, bz.kernel_offset, layout.HIGH_RAM_START, bz.kernel_size,
                     f"-kernel {kernel_path}")
            header = bz.header
            cmdline_limit = min(bz.cmdline_size or 255, layout.CMDLINE_MAX - 1)
            initrd_max = min(ram_end, bz.initrd_addr_max + 1)
    initrd = _load_initrd(memory, initrd_path, kernel_end, initrd_max) if initrd_path else None
    memory.write(layout.CMDLINE_ADDR, cmdline.render(cmdline_limit))
    memory.write(layout.EBDA_START, mptable.build_mptable(vcpus))
    e820 = params.e820_map(memory.size)
    if elf is not None and elf.pvh_entry is not None:
        memory.write(layout.GDT_ADDR, cpu.gdt_bytes(cpu.GDT_32))
        memory.write(layout.IDT_ADDR, bytes(8))
        info = params.pvh_start_info(layout.PVH_INFO_ADDR, e820, layout.CMDLINE_ADDR, initrd)
        memory.write(layout.PVH_INFO_ADDR, info)
        return BootEntry(long_mode=False, rip=elf.pvh_entry, boot_info=layout.PVH_INFO_ADDR)
    memory.write(layout.GDT_ADDR, cpu.gdt_bytes(cpu.GDT_64))
    memory.write(layout.IDT_ADDR, bytes(8))
    for addr, table in cpu.identity_page_tables():
        memory.write(addr, table)
    zero = params.zero_page(header, e820, layout.CMDLINE_ADDR, cmdline_limit, initrd)
    memory.write(layout.ZERO_PAGE_ADDR, zero)
    rip = elf.entry if elf is not None else layout.HIGH_RAM_START + 0x200
    return BootEntry(long_mode=True, rip=rip, boot_info=layout.ZERO_PAGE_ADDR)


def _loader_ranges(vcpus: int) -> list[tuple[int, int]]:
    """[start, end) of low memory the loader itself writes (boot structures, MP table)."""
    return [(0, layout.CMDLINE_ADDR + layout.CMDLINE_MAX),
            (layout.EBDA_START, layout.EBDA_START + mptable.mptable_size(vcpus))]


def _load_elf(memory: GuestMemory, fd: int, elf: ElfKernel, path: str,
              reserved: list[tuple[int, int]]) -> None:
    """Copy each PT_LOAD to its physical address and zero its bss tail."""
    for seg in elf.segments:
        where = f"-kernel {path}: segment at {seg.paddr:#x}+{seg.memsz:#x}"
        if not memory.contains(seg.paddr, seg.memsz):
            raise KernelImageError(f"{where} is outside guest RAM")
        if any(seg.paddr < end and start < seg.paddr + seg.memsz for start, end in reserved):
            raise KernelImageError(f"{where} overlaps the boot structures below 0x30000 or"
                                   " the MP table")
        _copy_in(memory, fd, seg.offset, seg.paddr, seg.filesz, f"-kernel {path}")
        _zero(memory, seg.paddr + seg.filesz, seg.memsz - seg.filesz)


def _zero(memory: GuestMemory, gpa: int, length: int) -> None:
    chunk = bytes(min(length, 1 << 20))
    while length > 0:
        n = min(length, len(chunk))
        memory.write(gpa, chunk[:n])
        gpa += n
        length -= n


def _load_initrd(
    memory: GuestMemory, path: str, kernel_end: int, limit: int
) -> tuple[int, int]:
    """Read the initrd into the highest page-aligned spot below ``limit``."""
    fd = _open_regular(path, "-initrd")
    try:
        size = os.fstat(fd).st_size
        addr = (limit - size) & ~(layout.PAGE_SIZE - 1)
        if size == 0 or addr < kernel_end:
            raise KernelImageError(
                f"-initrd {path}: {size} bytes do not fit in guest RAM above the kernel"
            )
        _copy_in(memory, fd, 0, addr, size, f"-initrd {path}")
        return addr, size
    finally:
        os.close(fd)
