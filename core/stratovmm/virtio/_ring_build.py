"""cffi (API mode) builder for ``stratovmm.virtio._ring``: the split ring's innermost loop in C.

Two functions, the per-request work of ``SplitQueue.pop`` and ``SplitQueue.add_used_batch``
(``stratovmm.virtio.native`` wraps them; the pure-Python path stays and both are checked
against each other):

- ``svmm_pop`` reads ``avail->idx`` and the next head (§2.7.6) and walks the chain with
  every check of ``stratovmm.virtio.chain.walk_chain`` (§2.7.5, §2.7.5.2, §2.7.5.3.1,
  §2.7.4.2), in the same order, so the same bad chain fails with the same reason; it
  writes the buffers' addresses and lengths to arrays the caller owns;
- ``svmm_push_used`` writes used elements and then ``used->idx`` once (§2.7.8.2).

Guest RAM is given as a host base pointer and the regions of ``GuestMemory`` (guest
start, guest end, offset of the host buffer from the guest address): every guest access
goes through ``svmm_host``, the same overflow-safe check as ``GuestMemory._offset``
(the range starts inside a region and its length fits in what is left of it), so no
address the guest chose can reach outside guest RAM.  Descriptors are copied out of
guest memory once and checked on the copy (the guest may rewrite them meanwhile).
"""

from __future__ import annotations

from cffi import FFI

# what the cdef and the C source both declare: a device's C handler's contract, and the
# state svmm_serve works on
_SHARED = """
struct svmm_chain { uint32_t head; uint32_t count; uint32_t readable; uint32_t reserved;
                    const struct iovec *iov; };
typedef int64_t (*svmm_handler)(void *context, const struct svmm_chain *chain);
struct svmm_serving {
    uint64_t desc_table; uint64_t avail_ring; uint64_t used_ring; uint32_t size;
    uint32_t event_idx; uint32_t ask_on_empty; uint32_t last_avail; uint32_t next_used;
    svmm_handler handler; void *context; const int *active;
    uint64_t *addrs; uint32_t *lens; struct iovec *iov; uint32_t *elements;
    uint32_t served; int stop;
};
"""

ffibuilder = FFI()
ffibuilder.cdef("""
struct svmm_region { uint64_t start; uint64_t end; int64_t delta; };
struct svmm_guest { uint8_t *base; const struct svmm_region *regions; int count; };
struct iovec { void *iov_base; size_t iov_len; };
""" + _SHARED + """
#define SVMM_HANDLER_ABI ...
#define SVMM_HANDLED_DEFER ...
#define SVMM_HANDLED_KEEP ...
#define SVMM_STOP_EMPTY ...
#define SVMM_STOP_BUDGET ...
#define SVMM_STOP_DEFER ...
#define SVMM_STOP_KEEP ...
#define SVMM_STOP_INACTIVE ...
#define SVMM_EMPTY ...
#define SVMM_CHAIN ...
#define SVMM_RING_JUMP ...
#define SVMM_BAD_HEAD ...
#define SVMM_RING_OUTSIDE ...
#define SVMM_E_INDEX ...
#define SVMM_E_TOO_LONG ...
#define SVMM_E_TABLE_OUTSIDE ...
#define SVMM_E_NESTED ...
#define SVMM_E_INDIRECT_NEXT ...
#define SVMM_E_INDIRECT_LEN ...
#define SVMM_E_INDIRECT_OUTSIDE ...
#define SVMM_E_BUFFER_OUTSIDE ...
#define SVMM_E_TOO_BIG ...
#define SVMM_E_READ_AFTER_WRITE ...

int svmm_pop(const struct svmm_guest *g, uint64_t desc_table, uint64_t avail_ring,
             uint32_t size, uint32_t last_avail, uint64_t *addrs, uint32_t *lens,
             uint32_t *out);
int svmm_push_used(const struct svmm_guest *g, uint64_t used_ring, uint32_t size,
                   uint32_t next_used, const uint32_t *elements, uint32_t count);
int svmm_serve(const struct svmm_guest *g, struct svmm_serving *s, uint32_t budget);
int svmm_need_event(const struct svmm_guest *g, uint64_t avail_ring, uint32_t size,
                    uint32_t new_used, uint32_t old_used);
""")

ffibuilder.set_source("stratovmm.virtio._ring", r"""
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

struct svmm_region { uint64_t start; uint64_t end; int64_t delta; };
struct svmm_guest { uint8_t *base; const struct svmm_region *regions; int count; };

/* A device's per-chain handler in C (a plugin's own cffi module: stratovmm.virtio.native).
   The chain was walked and checked whole (§2.7.5); iov holds its count buffers as host
   addresses, the readable ones first (§2.7.4.2).  The handler returns the bytes it wrote
   (the used length), or SVMM_HANDLED_DEFER to leave the chain to the device's Python
   handler, or SVMM_HANDLED_KEEP to leave it in the ring until the host side has data.
   SVMM_HANDLER_ABI changes whenever these declarations do. */
#define SVMM_HANDLER_ABI 1
#define SVMM_HANDLED_DEFER (-1)
#define SVMM_HANDLED_KEEP (-2)
""" + _SHARED + r"""
/* why svmm_serve stopped */
#define SVMM_STOP_EMPTY 0
#define SVMM_STOP_BUDGET 1
#define SVMM_STOP_DEFER 2
#define SVMM_STOP_KEEP 3
#define SVMM_STOP_INACTIVE 4

/* what svmm_pop found: a ring state, or a chain (good, or refused for one reason) */
#define SVMM_EMPTY 0
#define SVMM_CHAIN 1
#define SVMM_RING_JUMP 2
#define SVMM_BAD_HEAD 3
#define SVMM_RING_OUTSIDE 4
#define SVMM_E_INDEX 10
#define SVMM_E_TOO_LONG 11
#define SVMM_E_TABLE_OUTSIDE 12
#define SVMM_E_NESTED 13
#define SVMM_E_INDIRECT_NEXT 14
#define SVMM_E_INDIRECT_LEN 15
#define SVMM_E_INDIRECT_OUTSIDE 16
#define SVMM_E_BUFFER_OUTSIDE 17
#define SVMM_E_TOO_BIG 18
#define SVMM_E_READ_AFTER_WRITE 19

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

/* The host address of guest [gpa, gpa+len), or NULL when the range is not wholly inside
   one RAM region; never computes past gpa + len (GuestMemory._offset's rule). */
static uint8_t *svmm_host(const struct svmm_guest *g, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < g->count; i++) {
        const struct svmm_region *r = &g->regions[i];
        if (r->start <= gpa && gpa <= r->end && len <= r->end - gpa)
            return g->base + (int64_t)gpa + r->delta;
    }
    return NULL;
}

static int svmm_read_u16(const struct svmm_guest *g, uint64_t gpa, uint16_t *value)
{
    uint8_t *p = svmm_host(g, gpa, 2);
    if (p == NULL)
        return -1;
    memcpy(value, p, 2);     /* little-endian host: x86-64 only, as the KVM bindings */
    return 0;
}

/* Walk the chain at head (walk_chain's checks, in its order); 0 or an SVMM_E_* code. */
static int svmm_walk(const struct svmm_guest *g, uint64_t desc_table, uint32_t size,
                     uint32_t head, uint64_t *addrs, uint32_t *lens, struct iovec *iov,
                     uint32_t *out)
{
    uint64_t table = desc_table, table_size = size, index = head, total = 0;
    uint32_t steps = 0, count = 0, readable = 0;
    int in_indirect = 0, writing = 0;
    for (;;) {
        uint8_t raw[16];
        uint64_t addr;
        uint32_t len;
        uint16_t flags, next;
        uint8_t *p;
        if (index >= table_size) {
            return SVMM_E_INDEX;
        }
        if (++steps > size)
            return SVMM_E_TOO_LONG;
        p = svmm_host(g, table + index * 16, 16);
        if (p == NULL) {
            return SVMM_E_TABLE_OUTSIDE;
        }
        memcpy(raw, p, 16);      /* one copy: the checks below see one version of it */
        memcpy(&addr, raw, 8);
        memcpy(&len, raw + 8, 4);
        memcpy(&flags, raw + 12, 2);
        memcpy(&next, raw + 14, 2);
        if (flags & F_INDIRECT) {
            if (in_indirect)
                return SVMM_E_NESTED;
            if (flags & F_NEXT)
                return SVMM_E_INDIRECT_NEXT;
            if (len == 0 || len % 16 || len / 16 > size) {
                return SVMM_E_INDIRECT_LEN;
            }
            if (svmm_host(g, addr, len) == NULL) {
                return SVMM_E_INDIRECT_OUTSIDE;
            }
            table = addr; table_size = len / 16; index = 0;
            in_indirect = 1;
            steps = 0;
            continue;
        }
        p = svmm_host(g, addr, len);
        if (p == NULL) {
            return SVMM_E_BUFFER_OUTSIDE;
        }
        total += len;
        if (total >= ((uint64_t)1 << 32))
            return SVMM_E_TOO_BIG;
        if (flags & F_WRITE)
            writing = 1;
        else if (writing)
            return SVMM_E_READ_AFTER_WRITE;
        else
            readable++;
        /* at most size direct descriptors, then at most size in one indirect table */
        addrs[count] = addr;
        lens[count] = len;
        if (iov != NULL) {
            iov[count].iov_base = p;
            iov[count].iov_len = len;
        }
        count++;
        if (!(flags & F_NEXT)) {
            out[1] = count;
            out[2] = readable;
            return 0;
        }
        index = next;
    }
}

/* The next chain: SVMM_EMPTY, a broken ring (SVMM_RING_JUMP, SVMM_BAD_HEAD,
   SVMM_RING_OUTSIDE), or SVMM_CHAIN with out[0] = head, and either out[3] = 0 and
   out[1] buffers (out[2] of them readable) in addrs/lens (and iov, when given), or
   out[3] = the SVMM_E_* reason the chain is refused. */
static int svmm_next(const struct svmm_guest *g, uint64_t desc_table, uint64_t avail_ring,
                     uint32_t size, uint32_t last_avail, uint64_t *addrs, uint32_t *lens,
                     struct iovec *iov, uint32_t *out, uint16_t *known)
{
    uint16_t avail, head;
    uint32_t pending;
    /* avail->idx as last read, while it still names chains not taken (svmm_serve: the
       driver's cache line is read once per run of chains, as QEMU's shadow_avail_idx) */
    pending = known != NULL ? (uint32_t)(*known - last_avail) & 0xFFFF : 0;
    if (pending == 0 || pending > size) {
        if (svmm_read_u16(g, avail_ring + 2, &avail) != 0)
            return SVMM_RING_OUTSIDE;
        pending = (uint32_t)(avail - last_avail) & 0xFFFF;
        if (pending == 0)
            return SVMM_EMPTY;
        if (pending > size) {
            return SVMM_RING_JUMP;
        }
        if (known != NULL)
            *known = avail;
        /* the head is read after the index that published it (§2.7.13.3: a read barrier) */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    }
    if (svmm_read_u16(g, avail_ring + 4 + 2 * (uint64_t)(last_avail % size), &head) != 0)
        return SVMM_RING_OUTSIDE;
    out[0] = head;
    if (head >= size)
        return SVMM_BAD_HEAD;
    out[3] = (uint32_t)svmm_walk(g, desc_table, size, head, addrs, lens, iov, out);
    return SVMM_CHAIN;
}

/* svmm_next for Python (SplitQueue.pop): the caller advances last_avail past a chain,
   good or refused. */
int svmm_pop(const struct svmm_guest *g, uint64_t desc_table, uint64_t avail_ring,
             uint32_t size, uint32_t last_avail, uint64_t *addrs, uint32_t *lens,
             uint32_t *out)
{
    return svmm_next(g, desc_table, avail_ring, size, last_avail, addrs, lens, NULL, out,
                     NULL);
}

/* Write count (head, len) pairs from next_used on, then used->idx once after them
   (§2.7.8.2); the new used index, or -1 (nothing written) when the ring is outside RAM. */
int svmm_push_used(const struct svmm_guest *g, uint64_t used_ring, uint32_t size,
                   uint32_t next_used, const uint32_t *elements, uint32_t count)
{
    uint8_t *ring = svmm_host(g, used_ring, 4 + 8 * (uint64_t)size);
    uint16_t idx = (uint16_t)next_used;
    if (ring == NULL)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        memcpy(ring + 4 + 8 * (uint64_t)(idx % size), &elements[2 * i], 8);
        idx++;
    }
    /* the elements before the index the driver reads them by (QEMU: smp_wmb()) */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(ring + 2, &idx, 2);
    return idx;
}

/* With EVENT_IDX, whether the driver asked for an interrupt for the used entries from
   old_used up to new_used (§2.7.7.2: used_event in that range; Linux's
   vring_need_event), after a full barrier: our used->idx store is visible before the
   driver's used_event is read, or both sides may decide the other will act (QEMU: the
   smp_mb() in virtio_split_should_notify).  1 or 0; -1 when used_event lies outside
   RAM (SplitQueue.needs_interrupt then reads it, and fails, as it always does). */
int svmm_need_event(const struct svmm_guest *g, uint64_t avail_ring, uint32_t size,
                    uint32_t new_used, uint32_t old_used)
{
    uint16_t used_event;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (svmm_read_u16(g, avail_ring + 4 + 2 * (uint64_t)size, &used_event) != 0)
        return -1;
    return (uint16_t)(new_used - used_event - 1) < (uint16_t)(new_used - old_used);
}

/* Ask the driver to notify us of its next buffer (§2.7.10): with EVENT_IDX avail_event =
   the next index we will look at, else used->flags without NO_NOTIFY; then a full barrier,
   so that the caller's next read of avail->idx is not ordered before the store (QEMU's
   virtio_queue_set_notification, and the smp_mb() before its re-check).  -1 when the used
   ring's fields lie outside RAM. */
static int svmm_enable_notification(const struct svmm_guest *g, const struct svmm_serving *s,
                                    uint32_t last_avail)
{
    uint64_t at = s->event_idx ? s->used_ring + 4 + 8 * (uint64_t)s->size : s->used_ring;
    uint16_t value = s->event_idx ? (uint16_t)last_avail : 0;
    uint8_t *p = svmm_host(g, at, 2);
    if (p == NULL)
        return -1;
    memcpy(p, &value, 2);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return 0;
}

/* Serve up to budget chains with a device's C handler (SplitQueue.serve_native): pop a good
   chain, give it to the handler with its buffers as host iovecs, collect (head, used
   length); then write the used elements and used->idx once (§2.7.8.2).  Stops at the
   budget, an empty ring (with ask_on_empty, only after asking for the driver's next kick
   and finding nothing added meanwhile: SplitQueue.set_notification's re-check), a device
   reset (*active cleared: §2.4.1, nothing touches the rings after it), or anything Python
   must decide: a refused chain or broken ring (not popped: the Python path pops it again,
   counts and logs it), a handler's DEFER (the chain is not popped; the Python handler
   takes it) or KEEP (not popped; the host side has nothing for it yet).  Returns the
   chains served. */
int svmm_serve(const struct svmm_guest *g, struct svmm_serving *s, uint32_t budget)
{
    uint32_t out[4], served = 0, last_avail = s->last_avail;
    uint16_t known = (uint16_t)last_avail;      /* nothing known: read avail->idx first */
    uint32_t asked = 0x10000;           /* the last_avail we last asked for a kick at */
    int stop = SVMM_STOP_BUDGET;
    s->served = 0;
    s->stop = SVMM_STOP_DEFER;
    if (svmm_host(g, s->used_ring, 4 + 8 * (uint64_t)s->size) == NULL)
        return 0;                       /* the Python path raises as it always does */
    if (budget > s->size)
        budget = s->size;               /* one batch never laps the used ring */
    while (served < budget) {
        struct svmm_chain chain;
        int64_t used;
        int found;
        if (!__atomic_load_n(s->active, __ATOMIC_ACQUIRE)) {
            stop = SVMM_STOP_INACTIVE;
            break;
        }
        found = svmm_next(g, s->desc_table, s->avail_ring, s->size, last_avail, s->addrs,
                          s->lens, s->iov, out, &known);
        if (found == SVMM_EMPTY) {
            /* empty after asking at this very index: the driver will kick.  Else ask (at
               last_avail: after chains served since an earlier ask, that one is stale and
               the driver would not kick), then read avail->idx once more */
            if (!s->ask_on_empty || asked == last_avail) {
                stop = SVMM_STOP_EMPTY;
                break;
            }
            if (svmm_enable_notification(g, s, last_avail) != 0) {
                stop = SVMM_STOP_DEFER;
                break;
            }
            asked = last_avail;
            continue;
        }
        if (found != SVMM_CHAIN || out[3] != 0) {
            stop = SVMM_STOP_DEFER;
            break;
        }
        chain.head = out[0];
        chain.count = out[1];
        chain.readable = out[2];
        chain.reserved = 0;
        chain.iov = s->iov;
        used = s->handler(s->context, &chain);
        if (used < 0) {
            stop = used == SVMM_HANDLED_KEEP ? SVMM_STOP_KEEP : SVMM_STOP_DEFER;
            break;
        }
        s->elements[2 * served] = out[0];
        s->elements[2 * served + 1] = (uint32_t)used;
        served++;
        last_avail = (last_avail + 1) & 0xFFFF;
    }
    if (served) {
        s->next_used = (uint32_t)svmm_push_used(g, s->used_ring, s->size, s->next_used,
                                                s->elements, served);
        s->last_avail = last_avail;
    }
    s->served = served;
    s->stop = stop;
    return (int)served;
}
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
