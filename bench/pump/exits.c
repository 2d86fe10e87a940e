/* The exit-rate pump: pump.count exits to the VMM in a tight loop, one vCPU.
 *
 * pump.job=pio:     `out` to port pump.port (default 0x99, where neither VMM has a device);
 * pump.job=mmio:    32-bit reads of pump.addr (default 0xc0000000: no RAM, no device);
 * pump.job=mmioreg: 32-bit reads of the MagicValue register of the first virtio-mmio device
 *                   (a register read dispatched to a device model, answered at once);
 * pump.job=mmiostatus: the same with its InterruptStatus register, which a driver reads on
 *                   every interrupt (Linux's vm_interrupt).
 * pump.ring=0 (default) runs the loop in ring 0, pump.ring=3 in ring 3.
 */
#include "pump.h"
#include "rt.h"
#include "virtio.h"

static void pio_loop(uint64_t n, uint16_t port) {
    __asm__ volatile("1: outb %%al, %%dx\n\tdec %0\n\tjnz 1b"
                     : "+c"(n) : "a"(0), "d"(port) : "memory", "cc");
}

static void read_loop(uint64_t n, uint64_t addr, uint32_t *last) {
    uint32_t v = 0;
    __asm__ volatile("1: movl (%2), %1\n\tdec %0\n\tjnz 1b"
                     : "+c"(n), "+r"(v) : "r"(addr) : "memory", "cc");
    *last = v;
}

void exit_pump(void) {
    uint64_t count = arg_u64("pump.count", 50000);
    if (count == 0) die("pump.count must be at least 1");
    const char *job;
    uint64_t addr = 0;
    if (arg_is("pump.job", "pio")) {
        job = "pio";
    } else if (arg_is("pump.job", "mmio")) {
        job = "mmio";
        addr = arg_u64("pump.addr", 0xc0000000u);
    } else if (arg_is("pump.job", "mmioreg") || arg_is("pump.job", "mmiostatus")) {
        int magic = arg_is("pump.job", "mmioreg");
        job = magic ? "mmioreg" : "mmiostatus";
        if (!next_virtio_device(0, &addr)) die("the register pumps need a virtio device");
        addr += magic ? MAGIC : INT_STATUS;
    } else {
        die("pump.job must be pio, mmio, mmioreg or mmiostatus");
    }
    uint16_t port = (uint16_t)arg_u64("pump.port", 0x99);
    wait_for_host(job);
    struct clock c = {0};
    uint32_t last = 0;
    c.start = rdtsc();
    if (addr) read_loop(count, addr, &last);
    else pio_loop(count, port);
    c.total = c.busy = rdtsc() - c.start;
    pump_done();
    puts_("PUMP-END job=");
    puts_(job);
    putkv("count", count);
    putkv("completed", count);
    puts_(" value=");
    puthex(last);
    put_clock(&c);
    putc_('\n');
}
