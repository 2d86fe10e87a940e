/* The virtio-net frame pump (virtio 1.2 §5.1), on a device without offloads or mergeable
 * receive buffers: every frame is one descriptor holding the 12-byte virtio_net_hdr
 * (§5.1.6) and the Ethernet frame.
 *
 * pump.job=tx: pump.count frames of pump.size bytes (Ethernet header included, no FCS) to
 * the broadcast address with EtherType 0x88B5 (IEEE local experimental), pump.qd in flight.
 * pump.job=rx: pump.qd receive buffers kept posted; counts the 0x88B5 frames the host sends
 * until pump.count arrived, checking each one's sequence number and pattern.
 *
 * A frame's payload: u32 sequence number (from 0), u32 NET_MAGIC, then byte i (from 8)
 * = (i * 7 + 1) mod 256.  The checksum is the sum of the sequence numbers.
 */
#include "pump.h"
#include "rt.h"
#include "virtio.h"

#define NET_MAGIC 0x706d7570u           /* "pump" */
enum { RX = 0, TX = 1, HDR = 12, ETH = 14, MAX_FRAME = 1514, F_MAC = 5 };

struct net {
    uint64_t base;
    uint8_t mac[6];
    struct vq rx, tx;
    uint64_t qd, count, size;
};

struct tally { uint64_t done, badlen, other, misordered, corrupt, csum; };

static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 7 + 1); }

static void setup(struct net *n) {
    if (!next_virtio_device((int)arg_u64("pump.dev", 0), &n->base)) die("no virtio_mmio.device=");
    uint64_t acked = vdev_negotiate(n->base, ID_NET, (1ull << F_EVENT_IDX) | (1ull << F_MAC));
    for (int i = 0; i < 6; i++) n->mac[i] = *(volatile uint8_t *)(uintptr_t)(n->base + CONFIG + i);
    int event_idx = (int)(acked >> F_EVENT_IDX & 1);
    vq_setup(&n->rx, n->base, RX, 256, event_idx);
    vq_setup(&n->tx, n->base, TX, 256, event_idx);
    n->qd = arg_u64("pump.qd", 128);
    n->count = arg_u64("pump.count", 50000);
    n->size = arg_u64("pump.size", 1514);
    if (n->size < ETH + 8 || n->size > MAX_FRAME) die("pump.size must be 22..1514");
    if (n->qd == 0 || n->qd > n->rx.size || n->qd > n->tx.size) die("pump.qd must be 1..queue size");
    vdev_driver_ok(n->base);
}

static uint8_t *make_frame(struct net *n) {
    uint8_t *buf = ram_alloc(HDR + MAX_FRAME, 64);
    memset(buf, 0, HDR);
    uint8_t *eth = buf + HDR;
    memset(eth, 0xff, 6);
    memcpy(eth + 6, n->mac, 6);
    eth[12] = 0x88;
    eth[13] = 0xb5;
    *(uint32_t *)(eth + ETH + 4) = NET_MAGIC;
    for (uint64_t i = 8; i < n->size - ETH; i++) eth[ETH + i] = pattern(i);
    return buf;
}

static void transmit(struct net *n, struct tally *t, struct clock *c) {
    uint8_t **frames = ram_alloc(sizeof(uint8_t *) * n->qd, 8);
    for (uint64_t i = 0; i < n->qd; i++) {
        frames[i] = make_frame(n);
        n->tx.desc[i] = (struct vdesc){(uintptr_t)frames[i], (uint32_t)(HDR + n->size), 0, 0};
    }
    wait_for_host("tx");
    uint64_t sent = 0;
    c->start = rdtsc();
    for (uint64_t i = 0; i < n->qd && sent < n->count; i++) {
        *(uint32_t *)(frames[i] + HDR + ETH) = (uint32_t)sent;
        t->csum += sent++;
        vq_publish(&n->tx, (uint16_t)i);
    }
    vq_flush(&n->tx);
    c->busy += rdtsc() - c->start;
    while (t->done < n->count) {
        uint32_t id, len;
        vq_wait(&n->tx, &id, &len);
        uint64_t t0 = rdtsc();
        do {
            if (id >= n->qd) die("the device used an id the driver never made available");
            t->done++;
            if (sent < n->count) {
                *(uint32_t *)(frames[id] + HDR + ETH) = (uint32_t)sent;
                t->csum += sent++;
                vq_publish(&n->tx, (uint16_t)id);
            }
        } while (vq_reap(&n->tx, &id, &len));
        vq_no_interrupts(&n->tx);
        vq_flush(&n->tx);
        c->busy += rdtsc() - t0;
    }
    c->total = rdtsc() - c->start;
}

static void check_frame(struct net *n, const uint8_t *buf, uint32_t len, struct tally *t) {
    const uint8_t *eth = buf + HDR;
    if (len < HDR + ETH + 8 || eth[12] != 0x88 || eth[13] != 0xb5) { t->other++; return; }
    uint32_t seq = *(const uint32_t *)(eth + ETH);
    if (len - HDR != n->size) t->badlen++;
    if (seq != t->done) t->misordered++;
    uint64_t last = len - HDR - ETH - 1;
    if (*(const uint32_t *)(eth + ETH + 4) != NET_MAGIC || eth[ETH + 8] != pattern(8)
        || (last >= 8 && eth[ETH + last] != pattern(last)))
        t->corrupt++;
    t->csum += seq;
    t->done++;
}

static void receive(struct net *n, struct tally *t, struct clock *c) {
    uint8_t **bufs = ram_alloc(sizeof(uint8_t *) * n->qd, 8);
    for (uint64_t i = 0; i < n->qd; i++) {
        bufs[i] = ram_alloc(HDR + MAX_FRAME, 64);
        n->rx.desc[i] = (struct vdesc){(uintptr_t)bufs[i], HDR + MAX_FRAME, DESC_F_WRITE, 0};
        vq_publish(&n->rx, (uint16_t)i);
    }
    vq_flush(&n->rx);
    wait_for_host("rx");
    c->start = rdtsc();
    while (t->done < n->count) {
        uint32_t id, len;
        vq_wait(&n->rx, &id, &len);
        uint64_t t0 = rdtsc();
        do {
            if (id >= n->qd) die("the device used an id the driver never made available");
            check_frame(n, bufs[id], len, t);
            vq_publish(&n->rx, (uint16_t)id);
        } while (t->done < n->count && vq_reap(&n->rx, &id, &len));
        vq_no_interrupts(&n->rx);
        vq_flush(&n->rx);
        c->busy += rdtsc() - t0;
    }
    c->total = rdtsc() - c->start;
}

void net_pump(void) {
    struct net n;
    setup(&n);
    struct tally t = {0};
    struct clock c = {0};
    int tx = arg_is("pump.job", "tx");
    if (!tx && !arg_is("pump.job", "rx")) die("pump.job must be tx or rx");
    if (tx) transmit(&n, &t, &c);
    else receive(&n, &t, &c);
    pump_done();
    puts_(tx ? "PUMP-END job=tx" : "PUMP-END job=rx");
    putkv("count", n.count);
    putkv("completed", t.done);
    putkv("size", n.size);
    putkv("badlen", t.badlen);
    putkv("other", t.other);
    putkv("misordered", t.misordered);
    putkv("corrupt", t.corrupt);
    putkv("csum", t.csum);
    putkv("kicks", tx ? n.tx.kicks : n.rx.kicks);
    putkv("tsc_kick", tx ? n.tx.kick_tsc : n.rx.kick_tsc);
    putkv("bad_used_idx", tx ? n.tx.bad_used_idx : n.rx.bad_used_idx);
    putkv("qd", n.qd);
    putkv("event_idx", (uint64_t)n.tx.event_idx);
    put_clock(&c);
    putc_('\n');
}
