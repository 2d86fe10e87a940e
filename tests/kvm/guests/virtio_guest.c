/*
 * A freestanding virtio-mmio test guest (PVH, 32-bit, no paging, polled I/O).
 *
 * It finds its devices on the kernel command line ("virtio_mmio.device=SIZE@ADDR:IRQ"),
 * negotiates VIRTIO_F_VERSION_1 on the modern (version 2) transport, and then:
 *   blk: reads sector 1 and checks the host's pattern, writes its own pattern to
 *        sector 2 and flushes;
 *   rng: reads 32 bytes and prints them in hex.
 * Results go to the 8250 at 0x3f8; the guest then resets through the i8042.
 * The same binary boots under StratoVMM and QEMU -M microvm.
 */
#include <stdint.h>

#define REG(base, off) (*(volatile uint32_t *)((base) + (off)))
enum { MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, DEV_FEAT = 0x010, DEV_FEAT_SEL = 0x014,
       DRV_FEAT = 0x020, DRV_FEAT_SEL = 0x024, QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034,
       QUEUE_NUM = 0x038, QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050, INT_STATUS = 0x060,
       INT_ACK = 0x064, STATUS = 0x070, DESC_LO = 0x080, DESC_HI = 0x084, AVAIL_LO = 0x090,
       AVAIL_HI = 0x094, USED_LO = 0x0a0, USED_HI = 0x0a4, CONFIG = 0x100 };
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8 };
#define QSIZE 8

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static void putc_(char c) { outb(0x3f8, (uint8_t)c); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void puthex(uint32_t v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc_("0123456789abcdef"[(v >> (4 * i)) & 15]);
}
static void putdec(uint32_t v) { char b[12]; int n = 0; do { b[n++] = '0' + v % 10; v /= 10; } while (v); while (n) putc_(b[--n]); }

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct queue {
    struct desc desc[QSIZE] __attribute__((aligned(16)));
    struct { uint16_t flags, idx, ring[QSIZE], used_event; } avail __attribute__((aligned(2)));
    struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[QSIZE]; uint16_t avail_event; }
        used __attribute__((aligned(4)));
    uint16_t last_used;
};
static struct queue queues[4] __attribute__((aligned(4096)));
static int nqueues;

static int setup(uint32_t base, struct queue *q) {
    REG(base, STATUS) = 0;
    REG(base, STATUS) = S_ACK;
    REG(base, STATUS) = S_ACK | S_DRIVER;
    REG(base, DEV_FEAT_SEL) = 1;
    if (!(REG(base, DEV_FEAT) & 1)) { puts_("NO-VERSION-1\n"); return -1; }
    REG(base, DRV_FEAT_SEL) = 0; REG(base, DRV_FEAT) = 0;
    REG(base, DRV_FEAT_SEL) = 1; REG(base, DRV_FEAT) = 1;        /* VIRTIO_F_VERSION_1 only */
    REG(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(REG(base, STATUS) & S_FEATURES_OK)) { puts_("FEATURES-REFUSED\n"); return -1; }
    REG(base, QUEUE_SEL) = 0;
    if (REG(base, QUEUE_NUM_MAX) < QSIZE) { puts_("QUEUE-TOO-SMALL\n"); return -1; }
    REG(base, QUEUE_NUM) = QSIZE;
    REG(base, DESC_LO) = (uint32_t)&q->desc; REG(base, DESC_HI) = 0;
    REG(base, AVAIL_LO) = (uint32_t)&q->avail; REG(base, AVAIL_HI) = 0;
    REG(base, USED_LO) = (uint32_t)&q->used; REG(base, USED_HI) = 0;
    REG(base, QUEUE_READY) = 1;
    REG(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    return 0;
}

/* Post descriptors 0..n-1 as one chain, notify, poll for completion; returns used length. */
static int32_t submit(uint32_t base, struct queue *q, int n) {
    for (int i = 0; i < n - 1; i++) { q->desc[i].flags |= 1; q->desc[i].next = (uint16_t)(i + 1); }
    q->avail.ring[q->avail.idx % QSIZE] = 0;
    __asm__ volatile("" ::: "memory");
    q->avail.idx++;
    __asm__ volatile("mfence" ::: "memory");
    REG(base, QUEUE_NOTIFY) = 0;
    for (uint32_t spin = 0; spin < 400000000u; spin++) {
        if (*(volatile uint16_t *)&q->used.idx != q->last_used) {
            uint32_t len = q->used.ring[q->last_used % QSIZE].len;
            q->last_used++;
            REG(base, INT_ACK) = REG(base, INT_STATUS);
            return (int32_t)len;
        }
        __asm__ volatile("pause");
    }
    return -1;
}

static uint8_t sector[512] __attribute__((aligned(512)));
static struct { uint32_t type, reserved; uint64_t sector; } hdr;
static volatile uint8_t status_byte;

static int blk_io(uint32_t base, struct queue *q, uint32_t type, uint64_t lba, int dev_writes) {
    hdr.type = type; hdr.reserved = 0; hdr.sector = lba; status_byte = 0xff;
    q->desc[0] = (struct desc){(uint32_t)&hdr, 16, 0, 0};
    q->desc[1] = (struct desc){(uint32_t)sector, 512, (uint16_t)(dev_writes ? 2 : 0), 0};
    q->desc[2] = (struct desc){(uint32_t)&status_byte, 1, 2, 0};
    int32_t len = submit(base, q, type == 4 ? 0 : 3);
    return len < 0 ? -1 : status_byte;
}

static void test_blk(uint32_t base, struct queue *q) {
    uint32_t cap_lo = REG(base, CONFIG);
    puts_("BLK capacity="); putdec(cap_lo); putc_('\n');
    if (blk_io(base, q, 0, 1, 1) != 0) { puts_("BLK-READ-FAIL\n"); return; }
    int ok = 1;
    for (int i = 0; i < 512; i++) if (sector[i] != (uint8_t)(0xA0 ^ i)) ok = 0;
    puts_(ok ? "BLK-READ-OK\n" : "BLK-READ-MISMATCH\n");
    const char *msg = "WRITTEN-BY-THE-FREESTANDING-GUEST";
    for (int i = 0; i < 512; i++) sector[i] = (uint8_t)(i * 3);
    for (int i = 0; msg[i]; i++) sector[i] = (uint8_t)msg[i];
    int st = blk_io(base, q, 1, 2, 0);
    puts_(st == 0 ? "BLK-WRITE-OK\n" : "BLK-WRITE-FAIL\n");
    /* flush: header + status only */
    hdr.type = 4; hdr.sector = 0; status_byte = 0xff;
    q->desc[0] = (struct desc){(uint32_t)&hdr, 16, 0, 0};
    q->desc[1] = (struct desc){(uint32_t)&status_byte, 1, 2, 0};
    puts_(submit(base, q, 2) >= 1 && status_byte == 0 ? "BLK-FLUSH-OK\n" : "BLK-FLUSH-FAIL\n");
}

static uint8_t entropy[32];
static void test_rng(uint32_t base, struct queue *q) {
    q->desc[0] = (struct desc){(uint32_t)entropy, sizeof entropy, 2, 0};
    int32_t len = submit(base, q, 1);
    puts_("RNG len="); putdec((uint32_t)len); puts_(" data=");
    for (int i = 0; i < len && i < 32; i++) puthex(entropy[i], 2);
    putc_('\n');
}

static uint32_t parse_hex(const char **p) {
    uint32_t v = 0;
    if ((*p)[0] == '0' && ((*p)[1] == 'x' || (*p)[1] == 'X')) *p += 2;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v = v * 16 + (uint32_t)(c - 'A' + 10);
        else return v;
    }
}

static void probe(uint32_t base) {
    if (REG(base, MAGIC) != 0x74726976) { puts_("BAD-MAGIC\n"); return; }
    uint32_t version = REG(base, VERSION), id = REG(base, DEVICE_ID);
    puts_("DEVICE at 0x"); puthex(base, 8); puts_(" version="); putdec(version);
    puts_(" id="); putdec(id); putc_('\n');
    if (id == 0 || nqueues >= 4) return;
    struct queue *q = &queues[nqueues++];
    if (version != 2 || setup(base, q) != 0) { puts_("SETUP-FAIL\n"); return; }
    if (id == 2) test_blk(base, q);
    else if (id == 4) test_rng(base, q);
}

void guest_main(uint32_t start_info) {
    puts_("VIRTIO-GUEST-START\n");
    const char *cmdline = (const char *)*(uint32_t *)(start_info + 24);
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = cmdline; p && *p; p++) {
        int match = 1;
        for (int i = 0; key[i]; i++) if (p[i] != key[i]) { match = 0; break; }
        if (!match) continue;
        p += sizeof key - 1;
        while (*p && *p != '@') p++;           /* size: 4K, 512, ... */
        if (*p != '@') break;
        p++;
        probe(parse_hex(&p));
    }
    puts_("VIRTIO-GUEST-DONE\n");
    outb(0x64, 0xfe);
}
