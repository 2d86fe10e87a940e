/* The pump guest's ring-0 entry (called by start64.S): read the PVH start info, find the
 * RAM the pumps may use, and run the pump named by pump.mode= (blk, net or exits). */
#include "pump.h"
#include "rt.h"

enum { RAM_FROM = 16 << 20, E820_RAM = 1, USER_STACK = 64 << 10 };

/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) */
struct start_info {
    uint32_t magic, version, flags, nr_modules;
    uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    uint32_t memmap_entries, reserved;
};
struct memmap_entry { uint64_t addr, size; uint32_t type, reserved; };

static void find_ram(const struct start_info *si) {
    ram_base = RAM_FROM;
    ram_end = arg_u64("pump.ram", 0);        /* when the VMM gives no memory map */
    if (si->version < 1) return;
    const struct memmap_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
    for (uint32_t i = 0; i < si->memmap_entries; i++)
        if (e[i].type == E820_RAM && e[i].addr <= RAM_FROM && e[i].addr + e[i].size > RAM_FROM)
            ram_end = e[i].addr + e[i].size;
}

void wait_for_host(const char *job) {
    puts_("PUMP-READY job=");
    puts_(job);
    putc_('\n');
    if (arg_u64("pump.wait", 1)) getc_();
}

void pump_done(void) {
    puts_("PUMP-DONE\n");
    /* the host samples the VMM's threads at this line, then sends a byte: the report and
       the reset come after it, so the vCPU thread is still there to be read */
    if (arg_u64("pump.wait", 1)) getc_();
}

void put_clock(const struct clock *c) {
    putkv("tsc_total", c->total);
    putkv("tsc_busy", c->busy);
    putkv("irqs", irq_count);
}

/* An exception: say which, where, and reset (the VMM exits). */
void fault(const uint64_t *frame) {
    uint64_t vector = frame[0];
    int has_error = vector == 8 || (vector >= 10 && vector <= 14) || vector == 17
                    || vector == 21 || vector == 29 || vector == 30;
    puts_("PUMP-FAULT");
    putkv("vector", vector);
    puts_(" error=");
    puthex(has_error ? frame[1] : 0);
    puts_(" rip=");
    puthex(frame[has_error ? 2 : 1]);
    putc_('\n');
}

static void (*user_pump)(void);

static void user_main(void) {
    user_pump();
    reset();
}

void guest_main(uint32_t start_info) {
    const struct start_info *si = (const void *)(uintptr_t)start_info;
    cmdline_init((const char *)(uintptr_t)si->cmdline_paddr);
    find_ram(si);
    puts_("PUMP-GUEST");
    putkv("ram_mib", ram_end >> 20);
    putc_('\n');
    if (ram_end <= RAM_FROM) die("no RAM above 16 MiB (pass pump.ram=SIZE without a memory map)");
    if (arg_is("pump.mode", "exits") && arg_u64("pump.ring", 0) == 0) {
        exit_pump();
        reset();
    }
    if (arg_is("pump.mode", "blk")) user_pump = blk_pump;
    else if (arg_is("pump.mode", "net")) user_pump = net_pump;
    else if (arg_is("pump.mode", "exits")) user_pump = exit_pump;
    else die("pump.mode must be blk, net or exits");
    uint8_t *stack = ram_alloc(USER_STACK, 4096);
    enter_user(user_main, (uintptr_t)(stack + USER_STACK - 8));
}
