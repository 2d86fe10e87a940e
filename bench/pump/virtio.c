/* The polled virtio-mmio driver (see virtio.h). */
#include "virtio.h"
#include "rt.h"

uint64_t vdev_negotiate(uint64_t base, uint32_t device_id, uint64_t want) {
    if (REG32(base + MAGIC) != VIRTIO_MAGIC || REG32(base + VERSION) != 2)
        die("not a virtio-mmio version 2 device");
    if (REG32(base + DEVICE_ID) != device_id) die("unexpected virtio device id");
    REG32(base + STATUS) = 0;                                       /* §3.1.1 steps 1-3 */
    REG32(base + STATUS) = S_ACK;
    REG32(base + STATUS) = S_ACK | S_DRIVER;
    REG32(base + DEV_FEAT_SEL) = 0;
    uint64_t offered = REG32(base + DEV_FEAT);
    REG32(base + DEV_FEAT_SEL) = 1;
    offered |= (uint64_t)REG32(base + DEV_FEAT) << 32;
    if (!(offered & (1ull << F_VERSION_1))) die("the device does not offer VIRTIO_F_VERSION_1");
    uint64_t acked = (want & offered) | (1ull << F_VERSION_1);
    REG32(base + DRV_FEAT_SEL) = 0;
    REG32(base + DRV_FEAT) = (uint32_t)acked;
    REG32(base + DRV_FEAT_SEL) = 1;
    REG32(base + DRV_FEAT) = (uint32_t)(acked >> 32);
    REG32(base + STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;       /* §3.1.1 steps 5-6 */
    if (!(REG32(base + STATUS) & S_FEATURES_OK)) die("the device refused the features");
    return acked;
}

void vq_setup(struct vq *q, uint64_t base, uint16_t index, uint16_t size, int event_idx) {
    REG32(base + QUEUE_SEL) = index;
    uint32_t max = REG32(base + QUEUE_NUM_MAX);
    if (max == 0) die("queue not available");
    while (size > max) size >>= 1;                                  /* a power of 2 (§2.7) */
    memset(q, 0, sizeof *q);
    q->base = base;
    q->index = index;
    q->size = size;
    q->event_idx = event_idx;
    q->desc = ram_alloc(16ull * size, 4096);
    q->avail = ram_alloc(6 + 2ull * size, 4096);
    q->used = ram_alloc(6 + 8ull * size, 4096);
    memset(q->desc, 0, 16ull * size);
    memset((void *)q->avail, 0, 6 + 2ull * size);
    memset((void *)q->used, 0, 6 + 8ull * size);
    REG32(base + QUEUE_NUM) = size;
    REG32(base + DESC_LO) = (uint32_t)(uintptr_t)q->desc;
    REG32(base + DESC_HI) = 0;
    REG32(base + AVAIL_LO) = (uint32_t)(uintptr_t)q->avail;
    REG32(base + AVAIL_HI) = 0;
    REG32(base + USED_LO) = (uint32_t)(uintptr_t)q->used;
    REG32(base + USED_HI) = 0;
    REG32(base + QUEUE_READY) = 1;
    vq_no_interrupts(q);
}

void vdev_driver_ok(uint64_t base) {
    REG32(base + STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
}

/* vring_need_event (§2.7.10): kick when the device's avail_event lies in the entries made
 * available since the last kick decision. */
static int need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

void vq_flush(struct vq *q) {
    uint16_t old = q->published, now = q->avail_idx;
    if (old == now) return;
    barrier();                          /* ring entries before the index (§2.7.13.2) */
    q->avail[1] = now;
    q->published = now;
    mb();                               /* index store before reading the suppression (§2.7.13.4) */
    int kick;
    if (q->event_idx) {
        uint16_t avail_event = q->used[2 + 4 * q->size];
        kick = need_event(avail_event, now, old);
    } else {
        kick = !(q->used[0] & 1);       /* VIRTQ_USED_F_NO_NOTIFY */
    }
    if (kick) {
        uint64_t t = rdtsc();
        REG32(q->base + QUEUE_NOTIFY) = q->index;
        q->kick_tsc += rdtsc() - t;
        q->kicks++;
    }
}

int vq_reap(struct vq *q, uint32_t *id, uint32_t *len) {
    uint16_t ahead = (uint16_t)(q->used[1] - q->last_used);
    if (ahead == 0) return 0;
    if (ahead > q->size) {              /* more used than the ring holds: not a real index */
        q->bad_used_idx++;
        return 0;
    }
    barrier();                          /* the index before the entry (x86 keeps load order) */
    volatile uint32_t *elem = (volatile uint32_t *)(q->used + 2) + 2 * (q->last_used % q->size);
    *id = elem[0];
    *len = elem[1];
    q->last_used++;
    return 1;
}

void vq_no_interrupts(struct vq *q) {
    if (q->event_idx)
        q->avail[2 + q->size] = (uint16_t)(q->last_used + 0x8000);  /* used_event: far ahead */
    else
        q->avail[0] = 1;                                            /* VIRTQ_AVAIL_F_NO_INTERRUPT */
}

int vq_wait(struct vq *q, uint32_t *id, uint32_t *len) {
    uint64_t since = rdtsc();
    while (!vq_reap(q, id, len)) {
        cpu_relax();
        if (rdtsc() - since < STALL_TSC) continue;
        puts_("PUMP-STALL");
        putkv("queue", q->index);
        putkv("avail_idx", q->avail[1]);
        putkv("used_idx", q->used[1]);
        putkv("last_used", q->last_used);
        putkv("avail_event", q->used[2 + 4 * q->size]);
        putkv("used_event", q->avail[2 + q->size]);
        putkv("used_flags", q->used[0]);
        putkv("kicks", q->kicks);
        putkv("bad_used_idx", q->bad_used_idx);
        putc_('\n');
        reset();
    }
    return 1;
}
