"""cffi (API mode) builder for the x86 zero page, ``stratovmm.boot._bootparam``.

The C compiler reads ``<asm/bootparam.h>``, the Linux boot protocol's
``struct boot_params`` and ``struct setup_header`` (Documentation/arch/x86/boot.rst):
every struct is declared *partially* (``...;``) so cffi takes the real offsets and
sizes from the header, and every ``#define X ...`` takes its value from it, so no
field offset or flag is copied by hand.  Only ``stratovmm.boot`` imports it.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()

_CDEF = """
struct setup_header {
    uint8_t setup_sects; uint16_t root_flags; uint32_t syssize; uint16_t ram_size;
    uint16_t vid_mode; uint16_t root_dev; uint16_t boot_flag; uint16_t jump;
    uint32_t header; uint16_t version; uint32_t realmode_swtch; uint16_t start_sys_seg;
    uint16_t kernel_version; uint8_t type_of_loader; uint8_t loadflags;
    uint16_t setup_move_size; uint32_t code32_start; uint32_t ramdisk_image;
    uint32_t ramdisk_size; uint32_t bootsect_kludge; uint16_t heap_end_ptr;
    uint8_t ext_loader_ver; uint8_t ext_loader_type; uint32_t cmd_line_ptr;
    uint32_t initrd_addr_max; uint32_t kernel_alignment; uint8_t relocatable_kernel;
    uint8_t min_alignment; uint16_t xloadflags; uint32_t cmdline_size;
    uint32_t hardware_subarch; uint64_t hardware_subarch_data; uint32_t payload_offset;
    uint32_t payload_length; uint64_t setup_data; uint64_t pref_address; uint32_t init_size;
    uint32_t handover_offset; uint32_t kernel_info_offset; ...;
};
struct boot_e820_entry { uint64_t addr; uint64_t size; uint32_t type; ...; };
struct boot_params {
    uint32_t ext_ramdisk_image; uint32_t ext_ramdisk_size; uint32_t ext_cmd_line_ptr;
    uint8_t e820_entries; struct setup_header hdr;
    struct boot_e820_entry e820_table[...]; ...;
};
"""

_CONSTANTS = """
LOADED_HIGH CAN_USE_HEAP KEEP_SEGMENTS XLF_KERNEL_64 XLF_CAN_BE_LOADED_ABOVE_4G
E820_MAX_ENTRIES_ZEROPAGE
"""

ffibuilder.cdef(_CDEF + "".join(f"#define {name} ...\n" for name in _CONSTANTS.split()))
ffibuilder.set_source("stratovmm.boot._bootparam", "#include <asm/bootparam.h>\n")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
