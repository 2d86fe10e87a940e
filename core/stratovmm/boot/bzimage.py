"""bzImage parsing (Documentation/x86/boot.rst, "The real-mode kernel header").

Only what a 64-bit direct boot needs is accepted: boot protocol >= 2.12,
``LOADED_HIGH`` and ``XLF_KERNEL_64``, so the loader can jump to the 64-bit
entry at load address + 0x200 with paging already on.  Every field that leads
to a file offset or a length is bounded by the file size before use.
"""

from __future__ import annotations

import mmap
from typing import Any

from stratovmm.boot._bootparam import ffi, lib
from stratovmm.errors import KernelImageError
from stratovmm.records import record

HDR_OFFSET = 0x1F1
BOOT_FLAG = 0xAA55
HDRS_MAGIC = 0x53726448  # "HdrS"
MIN_PROTOCOL = 0x020C    # 2.12: xloadflags and the 64-bit entry point
ENTRY_64_OFFSET = 0x200  # startup_64 relative to the protected-mode kernel


@record(frozen=True)
class BzImage:
    """A parsed bzImage: the setup header bytes and where the kernel proper starts."""

    header: bytes          # the setup header as found, copied into boot_params.hdr
    kernel_offset: int     # file offset of the protected-mode kernel
    kernel_size: int
    version: int
    cmdline_size: int
    initrd_addr_max: int
    init_size: int


def looks_like_bzimage(data: bytes | mmap.mmap) -> bool:
    """True when the file carries the boot sector flag and the ``HdrS`` magic."""
    if len(data) < 0x206:
        return False
    hdr = _header(data)
    return bool(hdr.boot_flag == BOOT_FLAG and hdr.header == HDRS_MAGIC)


def _header(data: bytes | mmap.mmap) -> Any:
    """The setup header, over a copy of its bytes: a view of a mapped kernel file would
    keep the mapping from being closed while a traceback holds the header."""
    size = ffi.sizeof("struct setup_header")
    return ffi.from_buffer("struct setup_header *", data[HDR_OFFSET : HDR_OFFSET + size])


def parse_bzimage(data: bytes | mmap.mmap, name: str = "kernel") -> BzImage:
    """Validate and describe a bzImage, or raise ``KernelImageError``."""
    if len(data) < 0x1000:
        raise KernelImageError(f"{name}: too short for a bzImage ({len(data)} bytes)")
    hdr = _header(data)
    if hdr.boot_flag != BOOT_FLAG or hdr.header != HDRS_MAGIC:
        raise KernelImageError(f"{name}: no Linux boot header (boot_flag/HdrS missing)")
    if hdr.version < MIN_PROTOCOL:
        raise KernelImageError(
            f"{name}: boot protocol {hdr.version >> 8}.{hdr.version & 0xFF} is too old (need 2.12)"
        )
    if not hdr.loadflags & lib.LOADED_HIGH:
        raise KernelImageError(f"{name}: zImage (not loaded high) is not supported")
    if not hdr.xloadflags & lib.XLF_KERNEL_64:
        raise KernelImageError(f"{name}: kernel has no 64-bit entry point (XLF_KERNEL_64)")
    setup_sects = hdr.setup_sects or 4
    kernel_offset = (setup_sects + 1) * 512
    if kernel_offset >= len(data):
        raise KernelImageError(f"{name}: setup_sects={setup_sects} runs past the end of the file")
    header_end = 0x202 + data[0x201]   # boot.rst: end of header = 0x202 + byte at 0x201
    header_end = min(header_end, HDR_OFFSET + ffi.sizeof("struct setup_header"))
    return BzImage(
        header=bytes(data[HDR_OFFSET:header_end]),
        kernel_offset=kernel_offset,
        kernel_size=len(data) - kernel_offset,
        version=hdr.version,
        cmdline_size=hdr.cmdline_size,
        initrd_addr_max=hdr.initrd_addr_max,
        init_size=hdr.init_size,
    )
