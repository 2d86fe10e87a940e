"""The MP table (Intel MP spec 1.4): checksums, pointers and entry counts as a guest reads
them, for 1, 2 and 254 vCPUs."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

import pytest

from stratovmm.boot import layout, mptable

ENTRY_SIZE = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}     # processor, bus, ioapic, intsrc, lintsrc


@dataclass
class ParsedTable:
    """What a guest's MP table parser sees."""

    physptr: int
    spec_rev: int
    header_count: int
    length: int
    lapic: int
    entries: list[bytes]


def parse(blob: bytes, base: int) -> ParsedTable:
    """Walk the floating pointer and the configuration table like Linux's mpparse does."""
    assert blob[:4] == b"_MP_"
    assert blob[8] == 1, "floating pointer length is 1 paragraph"
    assert sum(blob[:16]) % 256 == 0, "floating pointer checksum"
    physptr = struct.unpack_from("<I", blob, 4)[0]
    off = physptr - base
    assert blob[off:off + 4] == b"PCMP"
    length, spec_rev = struct.unpack_from("<HB", blob, off + 4)
    assert sum(blob[off:off + length]) % 256 == 0, "configuration table checksum"
    count, lapic = struct.unpack_from("<HI", blob, off + 34)
    pos, entries = off + 44, []
    while pos < off + length:
        size = ENTRY_SIZE[blob[pos]]
        entries.append(blob[pos:pos + size])
        pos += size
    assert pos == off + length, "entries fill the table exactly"
    return ParsedTable(physptr, spec_rev, count, length, lapic, entries)


@pytest.mark.parametrize("vcpus", [1, 2, 254])
def test_mptable(vcpus: int) -> None:
    """Both checksums are zero; one processor per vCPU, one bus, one IOAPIC, 24+2 interrupts."""
    blob = mptable.build_mptable(vcpus)
    assert len(blob) == mptable.mptable_size(vcpus)
    table = parse(blob, layout.EBDA_START)
    assert table.physptr == layout.EBDA_START + 16
    assert table.spec_rev == 4
    assert table.lapic == layout.LAPIC_ADDR
    assert table.header_count == len(table.entries)
    kinds = Counter(e[0] for e in table.entries)
    assert kinds == {0: vcpus, 1: 1, 2: 1, 3: layout.IRQ_MAX + 1, 4: 2}

    cpus = [struct.unpack("<BBBBIIII", e) for e in table.entries if e[0] == 0]
    assert [c[1] for c in cpus] == list(range(vcpus)), "APIC ids are 0..n-1"
    assert [c[3] for c in cpus] == [3] + [1] * (vcpus - 1), "enabled, only the first is the BSP"

    (ioapic,) = [struct.unpack("<BBBBI", e) for e in table.entries if e[0] == 2]
    _, ioapic_id, _, flags, address = ioapic
    assert ioapic_id not in range(vcpus) and flags == 1 and address == layout.IOAPIC_ADDR

    (bus,) = [e for e in table.entries if e[0] == 1]
    assert bus[2:] == b"ISA   "

    intsrc = [struct.unpack("<BBHBBBB", e) for e in table.entries if e[0] == 3]
    assert [(s[4], s[5], s[6]) for s in intsrc] == [(irq, ioapic_id, irq)
                                                   for irq in range(layout.IRQ_MAX + 1)]
    lint = [struct.unpack("<BBHBBBB", e) for e in table.entries if e[0] == 4]
    assert [(s[1], s[6]) for s in lint] == [(mptable.MP_EXTINT, 0), (mptable.MP_NMI, 1)]


def test_mptable_at_another_base() -> None:
    """The floating pointer points at the table wherever the table is placed."""
    table = parse(mptable.build_mptable(2, base=0xF0000), 0xF0000)
    assert table.physptr == 0xF0010


def test_mptable_checksum_detects_a_change() -> None:
    """Flipping one byte breaks the checksum the guest checks (the check is not vacuous)."""
    blob = bytearray(mptable.build_mptable(2))
    blob[16 + 44] ^= 0x01
    assert sum(blob[16:16 + struct.unpack_from("<H", blob, 20)[0]]) % 256 != 0


def test_mptable_fits_below_1m() -> None:
    """Even with 254 vCPUs the table ends below 1 MiB, where the kernel is loaded."""
    assert layout.EBDA_START + mptable.mptable_size(layout.MAX_VCPUS) <= layout.HIGH_RAM_START


@pytest.mark.parametrize("vcpus", [0, -1, 255])
def test_mptable_refuses_bad_counts(vcpus: int) -> None:
    """0 or more than 254 vCPUs cannot be described."""
    with pytest.raises(ValueError, match=r"1\.\.254"):
        mptable.build_mptable(vcpus)


def test_checksum_helper() -> None:
    """checksum() returns the byte that makes the sum zero."""
    data = bytes(range(1, 50))
    assert (sum(data) + mptable.checksum(data)) % 256 == 0
    assert mptable.checksum(b"") == 0
