/* The pump guests' runtime: port I/O, the 8250 console, the TSC, the kernel command line,
 * and a little arithmetic, with no libc (freestanding, x86-64). */
#ifndef PUMP_RT_H
#define PUMP_RT_H
#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#define barrier() __asm__ volatile("" ::: "memory")
#define mb() __asm__ volatile("mfence" ::: "memory")

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* console (COM1 at 0x3f8) */
void putc_(char c);
void puts_(const char *s);
void putdec(uint64_t v);
void puthex(uint64_t v);
void putkv(const char *key, uint64_t v);   /* " key=v" */
int getc_(void);                           /* blocks until the host sends a byte */
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void die(const char *why);

/* kernel command line ("key=value" words) */
void cmdline_init(const char *cmdline);
uint64_t arg_u64(const char *key, uint64_t fallback);
const char *arg_str(const char *key);      /* the value, up to the next space; or 0 */
int arg_is(const char *key, const char *value);
int next_virtio_device(int index, uint64_t *base);   /* the index-th virtio_mmio.device= */

/* memory and numbers */
void *memset(void *dst, int c, uint64_t n);
void *memcpy(void *dst, const void *src, uint64_t n);
uint64_t xorshift64(uint64_t *state);

/* the RAM the guest may hand to devices: [ram_base, ram_end) */
extern uint64_t ram_base, ram_end;
void *ram_alloc(uint64_t bytes, uint64_t align);

/* start64.S */
extern volatile uint64_t irq_count;
__attribute__((noreturn)) void enter_user(void (*fn)(void), uint64_t stack_top);
#endif
