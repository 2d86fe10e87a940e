/* The virtio-blk request pump (virtio 1.2 §5.2).
 *
 * It keeps pump.qd requests in flight (each one indirect table: 16-byte header, the data
 * in pump.seg-byte descriptors, the status byte; §2.7.5.3, §5.2.6) until pump.count have
 * completed, refilling each slot as soon as its request is used.  Jobs (pump.job):
 * randread, randwrite (pump.bs-byte blocks at xorshift-random block numbers) and seqread,
 * seqwrite (consecutive blocks, wrapping at the end of the drive).
 *
 * The image's pattern (bench/pumpguest.py makes it): the first 8 bytes of every 512-byte
 * sector hold the sector number XOR ORIG_MAGIC.  Reads check that word in the sectors at
 * offsets 0, stride, 2*stride, ... and in the last sector of each block (stride =
 * max(512, bs/16)); a word stamped by an earlier write job (WRITE_MAGIC) counts as
 * "stamped".  Writes stamp the same positions with sector XOR WRITE_MAGIC, which the host
 * checks in the file afterwards.  The sum of every word read is the checksum.
 */
#include "pump.h"
#include "rt.h"
#include "virtio.h"

#define ORIG_MAGIC 0x70756d702d696d67ull    /* "pump-img" */
#define WRITE_MAGIC 0x70756d702d777274ull   /* "pump-wrt" */
enum { T_IN = 0, T_OUT = 1, SECTOR = 512, MAX_SEGS = 256 };

struct req_header { uint32_t type, reserved; uint64_t sector; };
struct slot {
    struct req_header hdr;
    volatile uint8_t status;
    uint8_t in_flight;
    uint64_t lba;
    uint8_t *data;
    struct vdesc *table;
};

struct job {
    int write, random;
    uint64_t bs, seg, nseg, stride, blocks, next_block, rng;
};

struct tally { uint64_t completed, errors, badlen, mismatches, orig, stamped, csum, spurious; };

static void job_from_cmdline(struct job *j, uint64_t capacity_sectors) {
    const char *name = arg_str("pump.job");
    if (!name) die("pump.job= is missing");
    j->write = arg_is("pump.job", "randwrite") || arg_is("pump.job", "seqwrite");
    j->random = arg_is("pump.job", "randread") || arg_is("pump.job", "randwrite");
    if (!j->random && !arg_is("pump.job", "seqread") && !arg_is("pump.job", "seqwrite"))
        die("pump.job must be randread, randwrite, seqread or seqwrite");
    j->bs = arg_u64("pump.bs", 4096);
    j->seg = arg_u64("pump.seg", j->bs);
    if (j->bs % SECTOR || j->seg % SECTOR || !j->seg || j->bs % j->seg)
        die("pump.bs and pump.seg must be multiples of 512 and seg must divide bs");
    j->nseg = j->bs / j->seg;
    if (j->nseg > MAX_SEGS) die("more than 256 data descriptors per request");
    j->stride = j->bs / 16 > SECTOR ? j->bs / 16 : SECTOR;
    j->blocks = capacity_sectors * SECTOR / j->bs;
    if (!j->blocks) die("the drive is smaller than one block");
    j->next_block = 0;
    j->rng = arg_u64("pump.seed", 1) | 1;
}

static uint64_t next_lba(struct job *j) {
    uint64_t block;
    if (j->random) {
        block = xorshift64(&j->rng) % j->blocks;
    } else {
        block = j->next_block;
        j->next_block = (block + 1) % j->blocks;
    }
    return block * (j->bs / SECTOR);
}

/* The next sector offset (in bytes) to check or stamp after `off`: every stride, then the
 * last sector; bs when done. */
static uint64_t next_checked(const struct job *j, uint64_t off) {
    uint64_t last = j->bs - SECTOR;
    if (off == last) return j->bs;
    return off + j->stride < last ? off + j->stride : last;
}

static void prepare(struct job *j, struct slot *s) {
    s->lba = next_lba(j);
    s->hdr.type = j->write ? T_OUT : T_IN;
    s->hdr.sector = s->lba;
    s->status = 0xff;
    s->in_flight = 1;
    if (j->write) {
        for (uint64_t off = 0; off < j->bs; off = next_checked(j, off))
            *(volatile uint64_t *)(s->data + off) = (s->lba + off / SECTOR) ^ WRITE_MAGIC;
    }
}

static void check(struct job *j, struct slot *s, uint32_t len, struct tally *t) {
    s->in_flight = 0;
    t->completed++;
    if (s->status != 0 && t->errors++ == 0) {
        puts_("PUMP-BAD-STATUS");
        putkv("status", s->status);
        putkv("lba", s->lba);
        putkv("completed", t->completed);
        putc_('\n');
    }
    if (len != (j->write ? 1 : j->bs + 1)) t->badlen++;     /* bytes written, §2.7.8 */
    if (j->write) return;
    for (uint64_t off = 0; off < j->bs; off = next_checked(j, off)) {
        uint64_t word = *(volatile uint64_t *)(s->data + off), sector = s->lba + off / SECTOR;
        t->csum += word;
        if (word == (sector ^ ORIG_MAGIC)) t->orig++;
        else if (word == (sector ^ WRITE_MAGIC)) t->stamped++;
        else if (t->mismatches++ == 0) {
            puts_("PUMP-MISMATCH");
            putkv("sector", sector);
            puts_(" word=");
            puthex(word);
            putc_('\n');
        }
    }
}

/* False (counted, the first one printed) for a request the device used twice (§2.7.8). */
static int in_flight(const struct slot *s, uint32_t id, struct tally *t) {
    if (s->in_flight) return 1;
    if (t->spurious++ == 0) {
        puts_("PUMP-SPURIOUS");
        putkv("id", id);
        putkv("completed", t->completed);
        putc_('\n');
    }
    return 0;
}

/* One slot per queue entry: its header, status and indirect table, built once. */
static struct slot *make_slots(struct vq *q, struct job *j, uint64_t qd) {
    struct slot *slots = ram_alloc(sizeof(struct slot) * qd, 64);
    for (uint64_t i = 0; i < qd; i++) {
        struct slot *s = &slots[i];
        s->data = ram_alloc(j->bs, 4096);
        memset(s->data, 0, j->bs);
        s->table = ram_alloc(16 * (j->nseg + 2), 16);
        s->table[0] = (struct vdesc){(uintptr_t)&s->hdr, sizeof s->hdr, DESC_F_NEXT, 1};
        for (uint64_t k = 0; k < j->nseg; k++)
            s->table[1 + k] = (struct vdesc){(uintptr_t)(s->data + k * j->seg), (uint32_t)j->seg,
                                             (uint16_t)(DESC_F_NEXT | (j->write ? 0 : DESC_F_WRITE)),
                                             (uint16_t)(2 + k)};
        s->table[1 + j->nseg] = (struct vdesc){(uintptr_t)&s->status, 1, DESC_F_WRITE, 0};
        q->desc[i] = (struct vdesc){(uintptr_t)s->table, (uint32_t)(16 * (j->nseg + 2)),
                                    DESC_F_INDIRECT, 0};
    }
    return slots;
}

static void run(struct vq *q, struct job *j, struct slot *slots, uint64_t qd, uint64_t count,
                struct tally *t, struct clock *c) {
    uint64_t submitted = 0;
    c->start = rdtsc();
    for (uint64_t i = 0; i < qd && submitted < count; i++, submitted++) {
        prepare(j, &slots[i]);
        vq_publish(q, (uint16_t)i);
    }
    vq_flush(q);
    c->busy += rdtsc() - c->start;
    while (t->completed < count) {
        uint32_t id, len;
        vq_wait(q, &id, &len);
        uint64_t t0 = rdtsc();
        do {
            if (id >= qd) die("the device used an id the driver never made available");
            if (!in_flight(&slots[id], id, t)) continue;
            check(j, &slots[id], len, t);
            if (submitted < count) {
                prepare(j, &slots[id]);
                vq_publish(q, (uint16_t)id);
                submitted++;
            }
        } while (vq_reap(q, &id, &len));
        vq_no_interrupts(q);
        vq_flush(q);
        c->busy += rdtsc() - t0;
    }
    c->total = rdtsc() - c->start;
}

void blk_pump(void) {
    uint64_t base;
    if (!next_virtio_device((int)arg_u64("pump.dev", 0), &base)) die("no virtio_mmio.device=");
    uint64_t want = 1ull << F_INDIRECT_DESC;
    if (arg_u64("pump.event_idx", 1)) want |= 1ull << F_EVENT_IDX;
    uint64_t acked = vdev_negotiate(base, ID_BLOCK, want);
    if (!(acked & (1ull << F_INDIRECT_DESC))) die("the drive does not offer INDIRECT_DESC");
    uint64_t capacity = REG32(base + CONFIG) | (uint64_t)REG32(base + CONFIG + 4) << 32;
    struct job j;
    job_from_cmdline(&j, capacity);
    struct vq q;
    vq_setup(&q, base, 0, 256, (int)(acked >> F_EVENT_IDX & 1));
    uint64_t qd = arg_u64("pump.qd", 128), count = arg_u64("pump.count", 50000);
    if (qd == 0 || qd > q.size) die("pump.qd must be 1..queue size");
    struct slot *slots = make_slots(&q, &j, qd);
    vdev_driver_ok(base);
    const char *job = arg_str("pump.job");
    char name[16];
    int n = 0;
    while (job[n] && job[n] != ' ' && n < 15) { name[n] = job[n]; n++; }
    name[n] = 0;
    wait_for_host(name);
    struct tally t = {0};
    struct clock c = {0};
    run(&q, &j, slots, qd, count, &t, &c);
    pump_done();
    puts_("PUMP-END job=");
    puts_(name);
    putkv("count", count);
    putkv("completed", t.completed);
    putkv("errors", t.errors);
    putkv("badlen", t.badlen);
    putkv("mismatches", t.mismatches);
    putkv("orig", t.orig);
    putkv("stamped", t.stamped);
    putkv("csum", t.csum);
    putkv("spurious", t.spurious);
    putkv("kicks", q.kicks);
    putkv("tsc_kick", q.kick_tsc);
    putkv("bad_used_idx", q.bad_used_idx);
    putkv("qd", qd);
    putkv("bs", j.bs);
    putkv("seg", j.seg);
    putkv("event_idx", (uint64_t)q.event_idx);
    put_clock(&c);
    putc_('\n');
}
