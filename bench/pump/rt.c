/* The pump guests' runtime (see rt.h). */
#include "rt.h"

enum { COM1 = 0x3f8, LSR = COM1 + 5, LSR_DATA_READY = 1 };

void putc_(char c) { outb(COM1, (uint8_t)c); }
void puts_(const char *s) { while (*s) putc_(*s++); }

void putdec(uint64_t v) {
    char b[24];
    int n = 0;
    do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) putc_(b[--n]);
}

void puthex(uint64_t v) {
    puts_("0x");
    for (int i = 15; i >= 0; i--) putc_("0123456789abcdef"[(v >> (4 * i)) & 15]);
}

void putkv(const char *key, uint64_t v) { putc_(' '); puts_(key); putc_('='); putdec(v); }

int getc_(void) {
    while (!(inb(LSR) & LSR_DATA_READY)) cpu_relax();
    return inb(COM1);
}

void die(const char *why) {
    puts_("PUMP-ERROR ");
    puts_(why);
    putc_('\n');
    reset();
}

/* -- the command line ----------------------------------------------------------------- */

static const char *cmdline;

void cmdline_init(const char *text) { cmdline = text; }

/* The value of the first "key=" word, or 0. */
const char *arg_str(const char *key) {
    if (!cmdline) return 0;
    for (const char *p = cmdline; *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (!*k && *q == '=') return q + 1;
    }
    return 0;
}

int arg_is(const char *key, const char *value) {
    const char *v = arg_str(key);
    if (!v) return 0;
    while (*value && *v == *value) { v++; value++; }
    return !*value && (*v == ' ' || *v == 0);
}

/* Decimal with an optional K/M/G suffix (powers of 2), or 0x-prefixed hex. */
static uint64_t parse_number(const char *p, const char **end) {
    uint64_t v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        for (p += 2;; p++) {
            char c = *p;
            if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (uint64_t)(c - 'A' + 10);
            else break;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++) v = v * 10 + (uint64_t)(*p - '0');
        if (*p == 'K' || *p == 'k') { v <<= 10; p++; }
        else if (*p == 'M' || *p == 'm') { v <<= 20; p++; }
        else if (*p == 'G' || *p == 'g') { v <<= 30; p++; }
    }
    if (end) *end = p;
    return v;
}

uint64_t arg_u64(const char *key, uint64_t fallback) {
    const char *v = arg_str(key);
    return v ? parse_number(v, 0) : fallback;
}

/* "virtio_mmio.device=SIZE@BASE:IRQ" words, as both VMMs append them (Linux's syntax). */
int next_virtio_device(int index, uint64_t *base) {
    static const char key[] = "virtio_mmio.device=";
    int seen = 0;
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        int match = 1;
        for (int i = 0; key[i]; i++) if (p[i] != key[i]) { match = 0; break; }
        if (!match) continue;
        const char *q = p + sizeof key - 1;
        while (*q && *q != '@' && *q != ' ') q++;
        if (*q != '@') continue;
        if (seen++ == index) { *base = parse_number(q + 1, 0); return 1; }
    }
    return 0;
}

/* -- memory ------------------------------------------------------------------------------ */

void *memset(void *dst, int c, uint64_t n) {
    uint8_t *d = dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, uint64_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

uint64_t xorshift64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

uint64_t ram_base, ram_end;

void *ram_alloc(uint64_t bytes, uint64_t align) {
    uint64_t at = (ram_base + align - 1) & ~(align - 1);
    if (at + bytes > ram_end || at + bytes < at) die("out of guest RAM (give the VM more -m)");
    ram_base = at + bytes;
    return (void *)(uintptr_t)at;
}
