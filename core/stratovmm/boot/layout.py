"""The guest physical memory map (x86_64, the shape linux-loader and Firecracker use).

Low memory holds the structures the loader writes; the kernel goes at 1 MiB
(bzImage) or where its ELF headers say; the initrd sits page-aligned at the top
of RAM below 4 GiB; [0xD000_0000, 4 GiB) is the MMIO hole, and RAM beyond
3.25 GiB continues at 4 GiB.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 0x1000

# low memory, below 1 MiB
GDT_ADDR = 0x500
IDT_ADDR = 0x520
PVH_INFO_ADDR = 0x6000          # struct hvm_start_info, then the modlist and memmap
ZERO_PAGE_ADDR = 0x7000         # struct boot_params
BOOT_STACK_ADDR = 0x8FF0
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000                # four page directories: 0xB000..0xEFFF map 4 GiB
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000           # including the NUL
EBDA_START = 0x9FC00            # MP floating pointer and table live here
LOW_RAM_END = EBDA_START        # e820: usable RAM below the EBDA
HIGH_RAM_START = 0x100000       # 1 MiB: the kernel's load address

# the MMIO hole and the devices in it
MMIO_HOLE_START = 0xD000_0000
MMIO_HOLE_END = 4 * GiB
VIRTIO_MMIO_BASE = MMIO_HOLE_START
VIRTIO_MMIO_SIZE = 0x1000
VIRTIO_MMIO_SLOTS = 16
VIRTIO_IRQ_BASE = 5
IOAPIC_ADDR = 0xFEC0_0000
# Free for plugins' register windows: past the virtio windows, below the IOAPIC.
PLUGIN_MMIO_START = VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOTS * VIRTIO_MMIO_SIZE
PLUGIN_MMIO_END = IOAPIC_ADDR
LAPIC_ADDR = 0xFEE0_0000
TSS_ADDR = 0xFFFB_D000          # three pages below the identity map page
IDENTITY_MAP_ADDR = 0xFFFB_C000

MIN_MEM = 256 * MiB
MAX_MEM = 512 * GiB
MAX_VCPUS = 254
IRQ_MAX = 23                    # IOAPIC pins


def ram_regions(mem_size: int) -> list[tuple[int, int]]:
    """(guest physical start, size) of each RAM range for ``mem_size`` bytes."""
    below = min(mem_size, MMIO_HOLE_START)
    regions = [(0, below)]
    if mem_size > below:
        regions.append((MMIO_HOLE_END, mem_size - below))
    return regions


def virtio_mmio_window(slot: int) -> tuple[int, int]:
    """(base address, IRQ) of virtio-mmio slot ``slot``."""
    if not 0 <= slot < VIRTIO_MMIO_SLOTS:
        raise ValueError(f"virtio-mmio slot {slot} out of range")
    return VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE, VIRTIO_IRQ_BASE + slot
