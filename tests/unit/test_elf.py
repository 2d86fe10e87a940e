"""ELF vmlinux parsing: PT_LOAD segments and the PVH note, with truncated and malicious
headers, and the real test guest's vmlinux."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot_images import (
    PHENTSIZE,
    PHNUM,
    PHOFF,
    PT_NOTE,
    Seg,
    build_elf,
    pvh_note,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from stratovmm.boot.elf import MAX_PHDRS, looks_like_elf, parse_elf
from stratovmm.errors import KernelImageError
from stratovmm.testing.guest import guest_dir


def test_64bit_without_note() -> None:
    """A 64-bit vmlinux: its PT_LOADs, e_entry, and no PVH entry."""
    data = build_elf([Seg(0x1000000, b"\x90" * 100, 0x3000), Seg(0x1400000, b"ab")], 0x1000000)
    elf = parse_elf(data)
    assert elf.entry == 0x1000000 and elf.pvh_entry is None
    assert [(s.paddr, s.filesz, s.memsz) for s in elf.segments] == [
        (0x1000000, 100, 0x3000), (0x1400000, 2, 2)]
    assert data[elf.segments[1].offset:elf.segments[1].offset + 2] == b"ab"
    assert elf.end == 0x1400002


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("descsz", [4, 8])
def test_pvh_note(bits: int, descsz: int) -> None:
    """The Xen PHYS32_ENTRY note gives the PVH entry, in a 4- or 8-byte descriptor."""
    data = build_elf([Seg(0x100000, b"\xf4")], 0x100000, bits=bits,
                     note=pvh_note(0x100ABC, descsz=descsz))
    assert parse_elf(data).pvh_entry == 0x100ABC


def test_note_among_other_notes() -> None:
    """The PVH note is found after other notes in the same PT_NOTE."""
    other = struct.pack("<III", 4, 8, 3) + b"GNU\0" + bytes(8)
    xen_other = pvh_note(0xDEAD, note_type=17)
    data = build_elf([Seg(0x100000, b"\xf4")], 0x100000, bits=32,
                     note=other + xen_other + pvh_note(0x100010))
    assert parse_elf(data).pvh_entry == 0x100010


@pytest.mark.parametrize("note", [
    pvh_note(0x100000, name=b"Xe\0\0"),                       # other owner
    pvh_note(0x100000, note_type=17),                         # other Xen note
    struct.pack("<III", 4, 4, 18) + b"Xen\0",                  # descriptor cut off
    struct.pack("<III", 0xFFFFFFF0, 4, 18) + b"Xen\0" + bytes(4),  # absurd name size
    struct.pack("<III", 4, 3, 18) + b"Xen\0" + bytes(4),       # wrong descriptor size
    b"\x01\x02",                                              # shorter than a note header
])
def test_bad_notes_give_no_entry(note: bytes) -> None:
    """Notes that are not a well-formed Xen PHYS32_ENTRY give no PVH entry (and no crash)."""
    data = build_elf([Seg(0x1000000, b"\xf4")], 0x1000000, note=note)
    assert parse_elf(data).pvh_entry is None


def test_32bit_needs_pvh_note() -> None:
    """A 32-bit ELF can only be entered the PVH way."""
    with pytest.raises(KernelImageError, match="32-bit ELF kernel needs a PVH entry note"):
        parse_elf(build_elf([Seg(0x100000, b"\xf4")], 0x100000, bits=32))


@pytest.mark.parametrize("size", [0, 4, 16, 52, 63])
def test_truncated_header(size: int) -> None:
    """A file shorter than an ELF header is not an ELF kernel."""
    data = build_elf([Seg(0x100000, b"\xf4")], 0x100000)[:size]
    with pytest.raises(KernelImageError, match="not an ELF file"):
        parse_elf(data, "-kernel k")


def test_wrong_magic() -> None:
    """looks_like_elf is the magic, nothing else."""
    data = build_elf([Seg(0x100000, b"\xf4")], 0x100000)
    assert looks_like_elf(data) and not looks_like_elf(b"\x7fELX" + data[4:])


@pytest.mark.parametrize(("offset", "value"), [
    (4, 3),                   # ELF class 3
    (5, 2),                   # big-endian
    (18, 40),                 # e_machine ARM
    (18, 3),                  # EM_386 in a 64-bit file
])
def test_not_x86(offset: int, value: int) -> None:
    """Other classes, byte orders and machines are refused."""
    data = bytearray(build_elf([Seg(0x100000, b"\xf4")], 0x100000))
    data[offset] = value
    with pytest.raises(KernelImageError, match="not a little-endian x86 ELF kernel"):
        parse_elf(bytes(data))


@pytest.mark.parametrize("bits", [32, 64])
def test_phdrs_past_eof(bits: int) -> None:
    """A program header table beyond the end of the file is refused."""
    data = bytearray(build_elf([Seg(0x100000, b"\xf4")], 0x100000, bits=bits,
                               note=pvh_note(0x100000)))
    struct.pack_into("<I" if bits == 32 else "<Q", data, PHOFF[bits], len(data) - 8)
    with pytest.raises(KernelImageError, match="program headers run past the end"):
        parse_elf(bytes(data))
    struct.pack_into("<I" if bits == 32 else "<Q", data, PHOFF[bits], 0xFFFFFFF0)
    with pytest.raises(KernelImageError, match="program headers run past the end"):
        parse_elf(bytes(data))


@pytest.mark.parametrize("phnum", [0, MAX_PHDRS + 1, 0xFFFF])
def test_bad_phnum(phnum: int) -> None:
    """No program headers, or more than the parser allows (huge phnum), is refused."""
    data = bytearray(build_elf([Seg(0x100000, b"\xf4")], 0x100000))
    struct.pack_into("<H", data, PHNUM[64], phnum)
    with pytest.raises(KernelImageError, match="bad program header table"):
        parse_elf(bytes(data))


def test_phnum_just_past_the_file() -> None:
    """A phnum within limits whose table would end past EOF is refused."""
    data = bytearray(build_elf([Seg(0x100000, b"\xf4")], 0x100000))
    struct.pack_into("<H", data, PHNUM[64], MAX_PHDRS)
    with pytest.raises(KernelImageError, match="program headers run past the end"):
        parse_elf(bytes(data))


@pytest.mark.parametrize("entsize", [0, 32, 55, 57, 0xFFFF])
def test_bad_phentsize(entsize: int) -> None:
    """A program header size other than the class's is refused."""
    data = bytearray(build_elf([Seg(0x100000, b"\xf4")], 0x100000))
    struct.pack_into("<H", data, PHENTSIZE[64], entsize)
    with pytest.raises(KernelImageError, match="bad program header table"):
        parse_elf(bytes(data))


def _patch_phdr(data: bytearray, index: int, field: str, value: int) -> None:
    """Overwrite one field of 64-bit program header ``index``."""
    offsets = {"offset": 8, "paddr": 24, "filesz": 32, "memsz": 40}
    base = struct.unpack_from("<Q", data, PHOFF[64])[0] + 56 * index
    struct.pack_into("<Q", data, base + offsets[field], value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("offset", 1 << 40, "segment 0 runs past the end of the file"),
    ("filesz", 1 << 20, "segment 0 runs past the end of the file"),
    ("filesz", (1 << 64) - 1, "segment 0 runs past the end of the file"),
    ("memsz", 1, "segment 0 has impossible sizes"),           # filesz 16 > memsz 1
    ("paddr", (1 << 64) - 0x10, "segment 0 has impossible sizes"),
    ("paddr", 1 << 48, "segment 0 has impossible sizes"),
])
def test_malicious_segment(field: str, value: int, message: str) -> None:
    """Segment offsets/sizes past the file, filesz > memsz, or addresses that wrap, refused."""
    data = bytearray(build_elf([Seg(0x1000000, bytes(16))], 0x1000000))
    _patch_phdr(data, 0, field, value)
    with pytest.raises(KernelImageError, match=message):
        parse_elf(bytes(data))


def test_note_segment_past_eof() -> None:
    """A PT_NOTE pointing past the file is refused like a PT_LOAD."""
    data = bytearray(build_elf([Seg(0x1000000, bytes(16))], 0x1000000, note=pvh_note(1)))
    _patch_phdr(data, 1, "filesz", 1 << 30)
    with pytest.raises(KernelImageError, match="segment 1 runs past the end"):
        parse_elf(bytes(data))


def test_no_loadable_segment() -> None:
    """Only notes, or only empty PT_LOADs: nothing to boot."""
    with pytest.raises(KernelImageError, match="no loadable segment"):
        parse_elf(build_elf([Seg(0, pvh_note(0x100000), p_type=PT_NOTE)], 0x100000, bits=32))
    with pytest.raises(KernelImageError, match="no loadable segment"):
        parse_elf(build_elf([Seg(0x100000, b"", 0)], 0x100000))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x120), st.integers(0, 255)), max_size=10),
       st.integers(0, 0x140))
def test_mutated_elf_never_crashes(patches: list[tuple[int, int]], cut: int) -> None:
    """Mutated or cut ELF files parse to in-file segments or raise KernelImageError only."""
    data = bytearray(build_elf([Seg(0x1000000, bytes(64), 0x2000)], 0x1000000,
                               note=pvh_note(0x1000000)))
    for offset, value in patches:
        if offset < len(data):
            data[offset] = value
    blob = bytes(data[: len(data) - cut])
    try:
        elf = parse_elf(blob)
    except KernelImageError:
        return
    for seg in elf.segments:
        assert seg.offset + seg.filesz <= len(blob)
        assert seg.filesz <= seg.memsz


def test_real_guest_vmlinux() -> None:
    """The shared guest's vmlinux parses: 64-bit, PVH note, segments from 16 MiB."""
    directory = guest_dir()
    path = directory / "vmlinux" if directory else Path("/nonexistent")
    if not path.exists():
        pytest.skip("no vmlinux in $STRATOVMM_GUEST_DIR")
    elf = parse_elf(path.read_bytes(), str(path))
    assert elf.pvh_entry is not None
    assert elf.entry == 0x1000000
    assert min(s.paddr for s in elf.segments) == 0x1000000
    assert any(s.paddr <= elf.pvh_entry < s.paddr + s.filesz for s in elf.segments)
