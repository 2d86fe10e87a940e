"""ELF ``vmlinux`` parsing: PT_LOAD segments and the Xen PVH entry note.

A kernel with a ``XEN_ELFNOTE_PHYS32_ENTRY`` note is entered the PVH way (32-bit
protected mode, ``%ebx`` = ``hvm_start_info``), as Firecracker and QEMU do;
a 64-bit vmlinux without one at ``e_entry`` in 64-bit mode with the Linux boot
protocol.  32-bit ELF files (small PVH test guests) must carry the note.
Every header field is bounded by the file size; segment overlap with the
loader's low-memory structures is refused.
"""

from __future__ import annotations

import mmap
import struct

from stratovmm.errors import KernelImageError
from stratovmm.records import record

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
MAX_PHDRS = 64

_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR64 = struct.Struct("<IIQQQQQQ")
_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")
_NHDR = struct.Struct("<III")


@record(frozen=True)
class Segment:
    """One PT_LOAD: ``filesz`` bytes from ``offset`` go to ``paddr``; zeros up to ``memsz``."""

    offset: int
    paddr: int
    filesz: int
    memsz: int


@record(frozen=True)
class ElfKernel:
    """A parsed vmlinux."""

    entry: int
    segments: tuple[Segment, ...]
    pvh_entry: int | None

    @property
    def end(self) -> int:
        """First guest address past the last segment."""
        return max(s.paddr + s.memsz for s in self.segments)


def looks_like_elf(data: bytes | mmap.mmap) -> bool:
    """True when the file starts with the ELF magic."""
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes | mmap.mmap, name: str = "kernel") -> ElfKernel:
    """Validate an x86 ELF kernel and list what to load, or raise ``KernelImageError``."""
    if len(data) < _EHDR64.size or data[:4] != ELF_MAGIC:
        raise KernelImageError(f"{name}: not an ELF file")
    elf_class, endian = data[4], data[5]
    is64 = elf_class == ELFCLASS64
    ehdr = _EHDR64 if is64 else _EHDR32
    (_ident, _type, machine, _version, entry, phoff, _shoff, _flags, _ehsize,
     phentsize, phnum, _shentsize, _shnum, _shstrndx) = ehdr.unpack_from(data)
    wanted = EM_X86_64 if is64 else EM_386
    if elf_class not in (ELFCLASS32, ELFCLASS64) or endian != ELFDATA2LSB or machine != wanted:
        raise KernelImageError(f"{name}: not a little-endian x86 ELF kernel")
    phdr = _PHDR64 if is64 else _PHDR32
    if phentsize != phdr.size or not 0 < phnum <= MAX_PHDRS:
        raise KernelImageError(f"{name}: bad program header table (entsize {phentsize}, {phnum})")
    if phoff > len(data) or phnum * phentsize > len(data) - phoff:
        raise KernelImageError(f"{name}: program headers run past the end of the file")
    segments: list[Segment] = []
    pvh_entry: int | None = None
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if is64:
            p_type, _pf, offset, _vaddr, paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, _vaddr, paddr, filesz, memsz, _pf, _align = fields
        if offset > len(data) or filesz > len(data) - offset:
            raise KernelImageError(f"{name}: segment {i} runs past the end of the file")
        if p_type == PT_LOAD and memsz:
            if filesz > memsz or paddr + memsz > 1 << 48:
                raise KernelImageError(f"{name}: segment {i} has impossible sizes")
            segments.append(Segment(offset, paddr, filesz, memsz))
        elif p_type == PT_NOTE and pvh_entry is None:
            pvh_entry = _find_pvh_entry(data[offset : offset + filesz])
    if not segments:
        raise KernelImageError(f"{name}: no loadable segment")
    if not is64 and pvh_entry is None:
        raise KernelImageError(f"{name}: a 32-bit ELF kernel needs a PVH entry note")
    return ElfKernel(entry=entry, segments=tuple(segments), pvh_entry=pvh_entry)


def _find_pvh_entry(notes: bytes) -> int | None:
    """Walk an ELF note area for ``Xen``/``XEN_ELFNOTE_PHYS32_ENTRY``."""
    pos = 0
    while pos + _NHDR.size <= len(notes):
        namesz, descsz, ntype = _NHDR.unpack_from(notes, pos)
        pos += _NHDR.size
        name_end = pos + ((namesz + 3) & ~3)
        desc_end = name_end + ((descsz + 3) & ~3)
        if desc_end > len(notes):
            return None
        name = notes[pos : pos + namesz].rstrip(b"\0")
        if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
            fmt = "<I" if descsz == 4 else "<Q"
            return int(struct.unpack_from(fmt, notes, name_end)[0])
        pos = desc_end
    return None
