/* A polled virtio-mmio (version 2) split-virtqueue driver for the pump guests (virtio 1.2
 * §2.7 split virtqueues, §4.2.2 MMIO registers).  The driver never takes interrupts: it
 * polls the used ring and asks the device not to interrupt it (§2.7.7, §2.7.10). */
#ifndef PUMP_VIRTIO_H
#define PUMP_VIRTIO_H
#include <stdint.h>

enum { MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, DEV_FEAT = 0x010, DEV_FEAT_SEL = 0x014,
       DRV_FEAT = 0x020, DRV_FEAT_SEL = 0x024, QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034,
       QUEUE_NUM = 0x038, QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050, INT_STATUS = 0x060,
       STATUS = 0x070,
       DESC_LO = 0x080, DESC_HI = 0x084, AVAIL_LO = 0x090, AVAIL_HI = 0x094, USED_LO = 0x0a0,
       USED_HI = 0x0a4, CONFIG = 0x100 };
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8 };
enum { F_INDIRECT_DESC = 28, F_EVENT_IDX = 29, F_VERSION_1 = 32 };
enum { DESC_F_NEXT = 1, DESC_F_WRITE = 2, DESC_F_INDIRECT = 4 };
enum { ID_NET = 1, ID_BLOCK = 2 };
#define VIRTIO_MAGIC 0x74726976u        /* "virt" */

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags, next; };

struct vq {
    uint64_t base;                     /* the device's MMIO window */
    uint16_t index, size;
    int event_idx;
    struct vdesc *desc;
    volatile uint16_t *avail;          /* flags, idx, ring[size], used_event */
    volatile uint16_t *used;           /* flags, idx, then ring[size] of {u32 id, u32 len} */
    uint16_t avail_idx;                /* next free avail slot (published on vq_flush) */
    uint16_t published;                /* avail idx the device was last told about */
    uint16_t last_used;
    uint64_t kicks, kick_tsc;          /* notifications sent, TSC cycles spent sending them */
    uint64_t bad_used_idx;             /* used->idx reads more than size ahead (§2.7.8) */
};

/* Reset, negotiate: the device must offer VERSION_1; returns the features accepted (the
 * subset of `want` the device offers, plus VERSION_1). */
uint64_t vdev_negotiate(uint64_t base, uint32_t device_id, uint64_t want);
/* Program queue `index` with up to `size` entries (at most what the device allows). */
void vq_setup(struct vq *q, uint64_t base, uint16_t index, uint16_t size, int event_idx);
void vdev_driver_ok(uint64_t base);

static inline void vq_publish(struct vq *q, uint16_t head) {
    q->avail[2 + q->avail_idx % q->size] = head;
    q->avail_idx++;
}
void vq_flush(struct vq *q);            /* make published heads visible; kick if asked */
int vq_reap(struct vq *q, uint32_t *id, uint32_t *len);   /* 1 when a used entry was taken */
void vq_no_interrupts(struct vq *q);    /* keep the device from interrupting (after reaping) */
/* Wait for a used entry, as vq_reap; after STALL_TSC cycles without one, print the ring's
 * indices (PUMP-STALL) and reset: a lost request must end the run, not hang it. */
int vq_wait(struct vq *q, uint32_t *id, uint32_t *len);
#define STALL_TSC (20ull * 1000 * 1000 * 1000)
#endif
