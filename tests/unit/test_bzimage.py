"""bzImage setup-header parsing (boot.rst), including truncated and malicious headers, and
the real test guest's bzImage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot_images import SETUP_HEADER_END, build_bzimage
from hypothesis import given, settings
from hypothesis import strategies as st

from stratovmm.boot.bzimage import looks_like_bzimage, parse_bzimage
from stratovmm.errors import KernelImageError
from stratovmm.testing.guest import guest_dir


def test_valid_image() -> None:
    """A protocol 2.15 64-bit image: kernel after the setup sectors, header fields read."""
    data = build_bzimage(setup_sects=4, cmdline_size=2047, init_size=0x345000,
                         initrd_addr_max=0x37FFFFFF)
    assert looks_like_bzimage(data)
    bz = parse_bzimage(data)
    assert bz.kernel_offset == 5 * 512
    assert bz.kernel_size == len(data) - 5 * 512
    assert (bz.version, bz.cmdline_size, bz.init_size, bz.initrd_addr_max) == (
        0x020F, 2047, 0x345000, 0x37FFFFFF)
    assert bz.header == data[0x1F1:SETUP_HEADER_END]


def test_setup_sects_zero_means_four() -> None:
    """boot.rst: setup_sects 0 means 4."""
    assert parse_bzimage(build_bzimage(setup_sects=0)).kernel_offset == 5 * 512


def test_header_length_bounded() -> None:
    """A header-length byte at 0x201 claiming more than struct setup_header is clamped."""
    bz = parse_bzimage(build_bzimage(header_len_byte=0xFF))
    assert len(bz.header) == SETUP_HEADER_END - 0x1F1


def test_short_header_length_kept() -> None:
    """An older, shorter header is copied only as far as it goes."""
    bz = parse_bzimage(build_bzimage(header_len_byte=0x64))
    assert len(bz.header) == 0x202 + 0x64 - 0x1F1


@pytest.mark.parametrize("size", [0, 0x200, 0x205, 0x206, 0xFFF])
def test_truncated(size: int) -> None:
    """A file cut before the end of the setup area is refused with its size."""
    data = build_bzimage()[:size]
    with pytest.raises(KernelImageError, match="too short for a bzImage"):
        parse_bzimage(data, "-kernel k")


def test_no_magic() -> None:
    """Without boot_flag 0xAA55 and "HdrS" the file is not a bzImage."""
    data = bytearray(build_bzimage())
    data[0x202:0x206] = b"HdrX"
    assert not looks_like_bzimage(bytes(data))
    with pytest.raises(KernelImageError, match="no Linux boot header"):
        parse_bzimage(bytes(data))
    data = bytearray(build_bzimage())
    struct.pack_into("<H", data, 0x1FE, 0x55AA)
    with pytest.raises(KernelImageError, match="no Linux boot header"):
        parse_bzimage(bytes(data))


@pytest.mark.parametrize(("version", "shown"), [(0x0200, "2.0"), (0x020B, "2.11")])
def test_old_protocol(version: int, shown: str) -> None:
    """Protocols before 2.12 (no xloadflags, no 64-bit entry) are refused with the version."""
    with pytest.raises(KernelImageError, match=f"boot protocol {shown} is too old"):
        parse_bzimage(build_bzimage(version=version))


def test_protocol_2_12_accepted() -> None:
    """2.12 is the first protocol accepted."""
    assert parse_bzimage(build_bzimage(version=0x020C)).version == 0x020C


def test_zimage_refused() -> None:
    """A kernel not loaded high (zImage) is refused."""
    with pytest.raises(KernelImageError, match="not loaded high"):
        parse_bzimage(build_bzimage(loadflags=0))


def test_no_64bit_entry() -> None:
    """A 32-bit-only kernel (no XLF_KERNEL_64) is refused."""
    with pytest.raises(KernelImageError, match="no 64-bit entry point"):
        parse_bzimage(build_bzimage(xloadflags=0x2))


@pytest.mark.parametrize("setup_sects", [20, 200, 255])
def test_setup_sects_past_eof(setup_sects: int) -> None:
    """setup_sects pointing past the end of the file is refused, not read out of bounds."""
    data = bytearray(build_bzimage(payload=bytes(4096)))
    data[0x1F1] = setup_sects
    with pytest.raises(KernelImageError, match=f"setup_sects={setup_sects} runs past the end"):
        parse_bzimage(bytes(data))


def test_no_kernel_after_setup() -> None:
    """Setup sectors that end exactly at the end of the file leave no kernel: refused."""
    data = bytearray(build_bzimage(setup_sects=4, payload=bytes(4096)))
    data[0x1F1] = len(data) // 512 - 1
    with pytest.raises(KernelImageError, match="runs past the end"):
        parse_bzimage(bytes(data))


_HEADER_FIELDS = st.lists(st.tuples(st.integers(0x1F1, SETUP_HEADER_END - 1),
                                    st.integers(0, 255)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_HEADER_FIELDS, st.integers(0x1000, 0x4000))
def test_mutated_headers_never_crash(patches: list[tuple[int, int]], length: int) -> None:
    """Mutated headers parse to an in-file kernel or raise KernelImageError, nothing else."""
    data = bytearray(build_bzimage(payload=b"\x90" * 0x3000))[:length]
    for offset, value in patches:
        data[offset] = value
    try:
        bz = parse_bzimage(bytes(data))
    except KernelImageError:
        return
    assert 0 < bz.kernel_offset < len(data)
    assert bz.kernel_offset + bz.kernel_size == len(data)
    assert len(bz.header) <= SETUP_HEADER_END - 0x1F1


def test_real_guest_bzimage() -> None:
    """The shared guest's bzImage parses: protocol >= 2.12, 2047-byte command line."""
    directory = guest_dir()
    path = directory / "bzImage" if directory else Path("/nonexistent")
    if not path.exists():
        pytest.skip("no bzImage in $STRATOVMM_GUEST_DIR")
    data = path.read_bytes()
    bz = parse_bzimage(data, str(path))
    assert bz.version >= 0x020C
    assert bz.cmdline_size == 2047
    assert bz.kernel_offset == ((data[0x1F1] or 4) + 1) * 512
    assert bz.init_size > bz.kernel_size, "the decompressed kernel is bigger than the image"
