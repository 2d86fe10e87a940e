"""Initial vCPU state for the two entry protocols: CPUID, MSRs, FPU, LAPIC, registers.

PVH (xen/include/public/arch-x86/hvm/start_info.h): 32-bit protected mode,
paging off, flat CS/DS/ES/SS, a valid TSS, ``%ebx`` = start info.
Linux 64-bit boot protocol (boot.rst): long mode with an identity map of the
loaded kernel, flat __BOOT_CS/__BOOT_DS, ``%rsi`` = boot_params.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from typing import Any

from stratovmm.boot import layout
from stratovmm.kvm.fds import CpuidEntry
from stratovmm.records import record, replace

log = logging.getLogger(__name__)

# control register and EFER bits
CR0_PE, CR0_ET, CR0_PG = 1 << 0, 1 << 4, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

# GDT entries: (flags, base, limit) in the descriptor's own encoding
GDT_32 = ((0, 0, 0), (0xC09B, 0, 0xFFFFF), (0xC093, 0, 0xFFFFF), (0x008B, 0, 0x67))
GDT_64 = ((0, 0, 0), (0xA09B, 0, 0xFFFFF), (0xC093, 0, 0xFFFFF), (0x808B, 0, 0xFFFFF))
CODE_SEL, DATA_SEL, TSS_SEL = 0x08, 0x10, 0x18

# MSRs written at boot (Firecracker's boot MSR set)
MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MISC_ENABLE_FAST_STRING = 1
MTRR_ENABLE, MTRR_TYPE_WRBACK = 1 << 11, 6

BOOT_MSRS: tuple[tuple[int, int], ...] = (
    (MSR_IA32_SYSENTER_CS, 0), (MSR_IA32_SYSENTER_ESP, 0), (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0), (MSR_CSTAR, 0), (MSR_KERNEL_GS_BASE, 0), (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0), (MSR_IA32_TSC, 0), (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
)

FPU_FCW, FPU_MXCSR = 0x37F, 0x1F80
APIC_LVT0, APIC_LVT1 = 0x350, 0x360
APIC_MODE_NMI, APIC_MODE_EXTINT = 4, 7

CPUID_HYPERVISOR = 1 << 31         # leaf 1 ECX
CPUID_HTT = 1 << 28                # leaf 1 EDX
CPUID_CMP_LEGACY = 1 << 1          # leaf 0x80000001 ECX

KVM_CPUID_FEATURES = 0x40000001    # <asm/kvm_para.h>: EAX holds the KVM_FEATURE_* bits

# QEMU's names for the paravirtual features (target/i386/cpu.c, feature_word_info[FEAT_KVM])
# and their KVM_FEATURE_* bits in KVM_CPUID_FEATURES EAX (<asm/kvm_para.h>).  QEMU names bits
# 0 and 3 (the old and the new kvmclock MSRs) both "kvmclock", so that name covers both.
KVM_FEATURES: dict[str, int] = {
    "kvmclock": 1 << 0 | 1 << 3,       # KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_CLOCKSOURCE2
    "kvm-nopiodelay": 1 << 1,          # KVM_FEATURE_NOP_IO_DELAY
    "kvm-mmu": 1 << 2,                 # KVM_FEATURE_MMU_OP (never offered by Linux KVM)
    "kvm-asyncpf": 1 << 4,             # KVM_FEATURE_ASYNC_PF
    "kvm-steal-time": 1 << 5,          # KVM_FEATURE_STEAL_TIME
    "kvm-pv-eoi": 1 << 6,              # KVM_FEATURE_PV_EOI
    "kvm-pv-unhalt": 1 << 7,           # KVM_FEATURE_PV_UNHALT
    "kvm-pv-tlb-flush": 1 << 9,        # KVM_FEATURE_PV_TLB_FLUSH
    "kvm-asyncpf-vmexit": 1 << 10,     # KVM_FEATURE_ASYNC_PF_VMEXIT
    "kvm-pv-ipi": 1 << 11,             # KVM_FEATURE_PV_SEND_IPI
    "kvm-poll-control": 1 << 12,       # KVM_FEATURE_POLL_CONTROL
    "kvm-pv-sched-yield": 1 << 13,     # KVM_FEATURE_PV_SCHED_YIELD
    "kvm-asyncpf-int": 1 << 14,        # KVM_FEATURE_ASYNC_PF_INT
    "kvm-msi-ext-dest-id": 1 << 15,    # KVM_FEATURE_MSI_EXT_DEST_ID
    "kvmclock-stable-bit": 1 << 24,    # KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
}


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """Encode one 8-byte segment descriptor."""
    return (((base & 0xFF000000) << 32) | ((flags & 0xF0FF) << 40) | ((limit & 0xF0000) << 32)
            | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF))


def gdt_bytes(table: tuple[tuple[int, int, int], ...]) -> bytes:
    """The GDT as it sits in guest memory."""
    return b"".join(struct.pack("<Q", gdt_entry(*e)) for e in table)


def _segment(seg: Any, index: int, flags: int, base: int, limit: int) -> None:
    """Fill a ``kvm_segment`` from a GDT descriptor, as the CPU would on a load."""
    granular = (flags >> 15) & 1
    seg.base = base
    seg.limit = (limit << 12) | 0xFFF if granular else limit
    seg.selector = index * 8
    seg.type = flags & 0xF
    seg.present = (flags >> 7) & 1
    seg.dpl = (flags >> 5) & 3
    seg.db = (flags >> 14) & 1
    seg.s = (flags >> 4) & 1
    seg.l = (flags >> 13) & 1
    seg.g = granular
    seg.avl = (flags >> 12) & 1
    seg.unusable = 0 if seg.present else 1


def setup_sregs(sregs: Any, long_mode: bool) -> None:
    """Segment and control registers for the PVH (32-bit) or 64-bit entry."""
    table = GDT_64 if long_mode else GDT_32
    _segment(sregs.cs, 1, *table[1])
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, 2, *table[2])
    _segment(sregs.tr, 3, *table[3])
    sregs.gdt.base = layout.GDT_ADDR
    sregs.gdt.limit = len(table) * 8 - 1
    sregs.idt.base = layout.IDT_ADDR
    sregs.idt.limit = 7
    if long_mode:
        sregs.cr3 = layout.PML4_ADDR
        sregs.cr4 = CR4_PAE
        sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
        sregs.efer = EFER_LME | EFER_LMA
    else:
        sregs.cr0 = CR0_PE | CR0_ET
        sregs.cr4 = 0
        sregs.efer = 0


def identity_page_tables() -> list[tuple[int, bytes]]:
    """PML4, PDPT and four page directories mapping the first 4 GiB with 2 MiB pages."""
    pml4 = struct.pack("<Q", layout.PDPT_ADDR | 0x3).ljust(4096, b"\0")
    pdpt = b"".join(struct.pack("<Q", (layout.PD_ADDR + i * 4096) | 0x3) for i in range(4))
    tables = [(layout.PML4_ADDR, pml4), (layout.PDPT_ADDR, pdpt.ljust(4096, b"\0"))]
    for i in range(4):
        pd = b"".join(struct.pack("<Q", ((i << 30) + (j << 21)) | 0x83) for j in range(512))
        tables.append((layout.PD_ADDR + i * 4096, pd))
    return tables


def _bits_for(n: int) -> int:
    """How many APIC id bits hold ``n`` distinct ids."""
    return max(0, (n - 1).bit_length())


@record(frozen=True)
class Topology:
    """vCPU ``index`` of ``count``, all cores of one socket, one thread per core."""

    index: int
    count: int


def filter_cpuid(supported: list[CpuidEntry], topo: Topology) -> list[CpuidEntry]:
    """KVM's supported CPUID, made true for this vCPU: APIC ids, core counts, hypervisor bit."""
    out: list[CpuidEntry] = []
    core_bits = _bits_for(topo.count)
    for e in supported:
        if e.function == 0xB:
            if e.index == 0:
                out.extend(_leaf_0b(replace(e, index=i), topo, core_bits) for i in range(3))
            continue
        if e.function == 0x1:
            ebx = (e.ebx & 0x0000FFFF) | (topo.index << 24) | (min(topo.count, 255) << 16)
            edx = e.edx | CPUID_HTT if topo.count > 1 else e.edx & ~CPUID_HTT
            e = replace(e, ebx=ebx, ecx=e.ecx | CPUID_HYPERVISOR, edx=edx)
        elif e.function == 0x4:
            e = replace(e, eax=(e.eax & 0x03FFFFFF) | ((topo.count - 1) << 26 if e.eax else 0))
        elif e.function == 0x80000001 and topo.count > 1:
            e = replace(e, ecx=e.ecx | CPUID_CMP_LEGACY)
        elif e.function == 0x80000008:
            e = replace(e, ecx=(core_bits << 12) | (topo.count - 1))
        elif e.function == 0x8000001E:
            e = replace(e, eax=topo.index, ebx=topo.index & 0xFF, ecx=0)
        out.append(e)
    return out


def kvm_features(supported: list[CpuidEntry],
                 features: Mapping[str, bool]) -> list[CpuidEntry]:
    """KVM's supported CPUID with the paravirtual features of ``-cpu host,NAME=on|off``.

    ``off`` clears the feature's bits in leaf 0x40000001 EAX, so the guest kernel never
    sees it (Linux checks ``kvm_para_has_feature()`` before it uses any of them); ``on`` is
    the default, KVM's own offer.  ``on`` for a feature KVM does not offer leaves it off
    with a warning, as QEMU does without ``enforce``: a guest told to use a hypercall or MSR
    that KVM lacks would fault.  Names are keys of ``KVM_FEATURES``.
    """
    clear = 0
    wanted = 0
    for name, on in features.items():
        if on:
            wanted |= KVM_FEATURES[name]
        else:
            clear |= KVM_FEATURES[name]
    out: list[CpuidEntry] = []
    for e in supported:
        if e.function == KVM_CPUID_FEATURES:
            for name in sorted(n for n, on in features.items() if on):
                if e.eax & KVM_FEATURES[name] != KVM_FEATURES[name]:
                    log.warning("-cpu %s=on: KVM does not offer it (CPUID.%XH:EAX mask %#x);"
                                " the guest does not get it", name, KVM_CPUID_FEATURES,
                                KVM_FEATURES[name])
            e = replace(e, eax=e.eax & ~clear)
        out.append(e)
    if wanted and not any(e.function == KVM_CPUID_FEATURES for e in supported):
        log.warning("-cpu: KVM offers no paravirtual features (no CPUID leaf %#x)",
                    KVM_CPUID_FEATURES)
    return out


def _leaf_0b(e: CpuidEntry, topo: Topology, core_bits: int) -> CpuidEntry:
    """Extended topology: level 0 = SMT (1 thread), level 1 = core (``count``), EDX = x2APIC id."""
    if e.index == 0:
        return replace(e, eax=0, ebx=1, ecx=(1 << 8), edx=topo.index)
    if e.index == 1:
        return replace(e, eax=core_bits, ebx=topo.count, ecx=(2 << 8) | 1, edx=topo.index)
    return replace(e, eax=0, ebx=0, ecx=e.index & 0xFF, edx=topo.index)


def lapic_lint(regs: bytearray) -> bytearray:
    """LINT0 as ExtINT (the 8259's output), LINT1 as NMI: what a BIOS sets up."""
    for offset, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", regs, offset)[0]
        struct.pack_into("<I", regs, offset, (value & ~0x700) | (mode << 8))
    return regs
