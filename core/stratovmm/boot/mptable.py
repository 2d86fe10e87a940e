"""The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
finds its CPUs, the IOAPIC and how ISA IRQs reach it.

Layout at ``layout.EBDA_START``: the floating pointer (``_MP_``, 16 bytes),
then the configuration table (``PCMP`` header, 44 bytes) with one processor
entry per vCPU (APIC id = index, the first is the BSP), one ISA bus, the IOAPIC
(id = vCPUs + 1), an interrupt source per IOAPIC pin mapping ISA IRQ n to pin n
(as KVM's default routing does), and the two local interrupt sources (ExtINT on
LINT0, NMI on LINT1).  Both checksums make their structure's bytes sum to 0.
"""

from __future__ import annotations

import struct

from stratovmm.boot import layout

MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC = 0, 1, 2, 3, 4
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
CPU_ENABLED, CPU_BOOTPROCESSOR = 1, 2
MPC_APIC_USABLE = 1
APIC_VERSION = 0x14
CPU_SIGNATURE = 0x600
CPU_FEATURES = 0x201             # FPU | APIC

_MPF = struct.Struct("<4sIBBBBBBBB")          # mpf_intel, 16 bytes
_MPC = struct.Struct("<4sHBB8s12sIHHII")      # mpc_table, 44 bytes
_CPU = struct.Struct("<BBBBIIII")             # mpc_cpu, 20 bytes
_BUS = struct.Struct("<BB6s")                 # mpc_bus, 8 bytes
_IOAPIC = struct.Struct("<BBBBI")             # mpc_ioapic, 8 bytes
_INTSRC = struct.Struct("<BBHBBBB")           # mpc_intsrc, 8 bytes
_LINTSRC = struct.Struct("<BBHBBBB")          # mpc_lintsrc, 8 bytes


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus itself sum to zero (mod 256)."""
    return (-sum(data)) & 0xFF


def mptable_size(vcpus: int) -> int:
    """Bytes the table occupies for ``vcpus`` processors."""
    return (_MPF.size + _MPC.size + _CPU.size * vcpus + _BUS.size + _IOAPIC.size
            + _INTSRC.size * (layout.IRQ_MAX + 1) + _LINTSRC.size * 2)


def build_mptable(vcpus: int, base: int = layout.EBDA_START) -> bytes:
    """The floating pointer and configuration table for ``vcpus`` vCPUs, placed at ``base``."""
    if not 1 <= vcpus <= layout.MAX_VCPUS:
        raise ValueError(f"MP table supports 1..{layout.MAX_VCPUS} vCPUs, not {vcpus}")
    ioapic_id = vcpus + 1
    entries = bytearray()
    for cpu in range(vcpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries += _CPU.pack(MP_PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE,
                             CPU_FEATURES, 0, 0)
    entries += _BUS.pack(MP_BUS, 0, b"ISA   ")
    entries += _IOAPIC.pack(MP_IOAPIC, ioapic_id, APIC_VERSION, MPC_APIC_USABLE,
                            layout.IOAPIC_ADDR)
    for irq in range(layout.IRQ_MAX + 1):
        entries += _INTSRC.pack(MP_INTSRC, MP_INT, 0, 0, irq, ioapic_id, irq)
    entries += _LINTSRC.pack(MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0)
    entries += _LINTSRC.pack(MP_LINTSRC, MP_NMI, 0, 0, 0, 0xFF, 1)

    table_addr = base + _MPF.size
    length = _MPC.size + len(entries)
    header = bytearray(_MPC.pack(b"PCMP", length, 4, 0, b"STRATO  ", b"MICROVM     ",
                                 0, 0, vcpus + 2 + (layout.IRQ_MAX + 1) + 2,
                                 layout.LAPIC_ADDR, 0))
    header[7] = checksum(bytes(header) + bytes(entries))
    mpf = bytearray(_MPF.pack(b"_MP_", table_addr, 1, 4, 0, 0, 0, 0, 0, 0))
    mpf[10] = checksum(bytes(mpf))
    return bytes(mpf) + bytes(header) + bytes(entries)
