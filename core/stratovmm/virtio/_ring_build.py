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

# a loop's wait that serves kicks in C (svmm_wait): one queue's state, one fd that serves it
_KICKS = """
/* svmm_queue: one queue svmm_wait may serve.  Python writes guest, serving (its position
   and C handler), budget, isr (InterruptStatus), irqfd, kick_fd (its ioeventfd) once, and
   signalled_used/valid (SplitQueue.needs_interrupt's state) and enabled before each wait;
   enabled is cleared by C when it hands the queue to Python and by svmm_queue_stop (any
   thread; busy is set while C serves it); watched: a host fd (a tap) serves it too;
   polling: served to empty, its kick not asked yet; emptied: served to empty since the
   last sleep; ran, served: what Python takes back after the wait.
   svmm_kick: an fd of the loop's epoll that serves a queue (an ioeventfd, or a host fd).
   svmm_poll: the loop's poll window (ns, adapting up to max_ns). */
struct svmm_queue {
    const struct svmm_guest *guest; struct svmm_serving *serving; uint32_t budget;
    uint32_t signalled_used; uint32_t signalled_valid; uint32_t *isr; int irqfd;
    int kick_fd; int enabled; int busy; int watched; int polling; int emptied; uint32_t ran;
    uint64_t served;
};
struct svmm_kick { int fd; int is_eventfd; struct svmm_queue *queue; };
struct svmm_poll { int64_t ns; int64_t max_ns; };
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
""" + _KICKS + """
#define SVMM_WAIT_MAX_EVENTS ...
int svmm_wait(int epfd, struct svmm_kick *const *kicks, uint32_t count, int64_t timeout_ns,
              int64_t slice_ns, struct svmm_poll *poll, uint32_t *out, int *error);
void svmm_queue_stop(struct svmm_queue *q);
""")

_SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct svmm_region { uint64_t start; uint64_t end; int64_t delta; };
struct svmm_guest { uint8_t *base; const struct svmm_region *regions; int count; };

/* A device's per-chain handler in C (a plugin's own cffi module: stratovmm.virtio.native).
   The chain was walked and checked whole (§2.7.5); iov holds its count buffers as host
   addresses, the readable ones first (§2.7.4.2).  The handler returns the bytes it wrote
   (the used length), or SVMM_HANDLED_DEFER to leave the chain to the device's Python
   handler, or SVMM_HANDLED_KEEP to leave it in the ring until the host side has data, or
   (ABI 2) SVMM_HANDLED_PART(len): the chain took len bytes of an item that goes on in the
   next chain (a received frame over several mergeable buffers, §5.1.6.4): the item's
   chains are used together, or, when serving stops before its last one, none of them
   (they go back to the ring and the Python handler takes the item over).
   SVMM_HANDLER_ABI changes whenever these declarations do; ABI 1 handlers (no PART)
   still work. */
#define SVMM_HANDLER_ABI 2
#define SVMM_HANDLED_DEFER (-1)
#define SVMM_HANDLED_KEEP (-2)
#define SVMM_HANDLED_PART(len) (-((int64_t)1 << 32) - (int64_t)(len))
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
    uint32_t item_served = 0, item_avail = last_avail;  /* where the current item began */
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
        if (used < 0 && used > SVMM_HANDLED_PART(0)) {
            stop = used == SVMM_HANDLED_KEEP ? SVMM_STOP_KEEP : SVMM_STOP_DEFER;
            break;
        }
        s->elements[2 * served] = out[0];
        s->elements[2 * served + 1] = (uint32_t)(used < 0 ? SVMM_HANDLED_PART(0) - used : used);
        served++;
        last_avail = (last_avail + 1) & 0xFFFF;
        if (used >= 0) {                /* the item is whole */
            item_served = served;
            item_avail = last_avail;
        }
    }
    if (item_served != served) {        /* an item cut short: its chains back to the ring */
        served = item_served;
        last_avail = item_avail;
        if (stop != SVMM_STOP_INACTIVE)
            stop = SVMM_STOP_DEFER;
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
"""

# svmm_wait: the event loop's wait, serving in C the kicks (and a receive queue's host fd) of
# queues whose device lets C take them (stratovmm.virtio.kicks), so that a kick costs no
# Python: read the ioeventfd, svmm_serve, the interrupt decision, the irqfd.  And, as QEMU's
# iothreads (aio_poll's adaptive polling), a queue served to empty is watched for a short
# while before the loop asks for the driver's next kick and sleeps.
_WAIT = r"""
#define SVMM_WAIT_MAX_EVENTS 64
#define SVMM_POLL_GROW_NS 4000          /* QEMU's first poll window after none */

static int64_t svmm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void svmm_kick_again(int fd)
{
    uint64_t one = 1;
    (void)!write(fd, &one, sizeof one);     /* an eventfd: only fails when it overflows */
}

/* SplitQueue.needs_interrupt in C (§2.7.7): with EVENT_IDX, whether used_event lies in the
   used entries since the last interrupt; without, unless VIRTQ_AVAIL_F_NO_INTERRUPT.  The
   rings were checked to lie in RAM when the queue was set up (QueueConfig.check), so a
   read that fails here means the memory map changed: interrupt, the safe side. */
static int svmm_should_interrupt(struct svmm_queue *q)
{
    const struct svmm_serving *s = q->serving;
    uint16_t flags;
    uint32_t old = q->signalled_used, valid = q->signalled_valid;
    q->signalled_used = s->next_used & 0xFFFF;
    q->signalled_valid = 1;
    if (s->event_idx) {
        if (!valid)
            return 1;
        return svmm_need_event(q->guest, s->avail_ring, s->size, s->next_used, old) != 0;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* our used->idx store, then the flags */
    if (svmm_read_u16(q->guest, s->avail_ring, &flags) != 0)
        return 1;
    return !(flags & 1);
}

/* Give q to Python: disabled (its events go to Python), its kick eventfd written (Python's
   handler serves the queue; the loop's next epoll_wait reports it). */
static void svmm_hand_over(struct svmm_queue *q)
{
    __atomic_store_n(&q->enabled, 0, __ATOMIC_SEQ_CST);
    q->polling = 0;
    svmm_kick_again(q->kick_fd);
}

/* Serve q with its device's C handler, then interrupt the driver if it asked.  ask: at an
   empty ring, ask for the driver's next kick (§2.7.10); else the ring is left to the poll
   (q->polling), which asks when its window closes.  0 when done in C, 1 when handed to
   Python: a chain the handler defers or the walk refuses, a reset, or a receive queue
   whose host fd must start (a chain kept for host data) or stop (no buffers) being
   watched. */
static int svmm_serve_queue(struct svmm_queue *q, int ask)
{
    struct svmm_serving *s = q->serving;
    uint32_t saved = s->ask_on_empty;
    int served, python = 0;
    s->ask_on_empty = (uint32_t)ask;
    served = svmm_serve(q->guest, s, q->budget);
    s->ask_on_empty = saved;
    q->ran = 1;
    q->served += (uint64_t)served;
    if (served && svmm_should_interrupt(q)) {
        __atomic_fetch_or(q->isr, 1, __ATOMIC_SEQ_CST);    /* InterruptStatus: used ring */
        svmm_kick_again(q->irqfd);
    }
    q->polling = 0;
    switch (s->stop) {
    case SVMM_STOP_EMPTY:
        python = q->watched;
        q->polling = !ask && !python;
        q->emptied = 1;         /* (its next kick tells whether polling would have paid) */
        break;
    case SVMM_STOP_KEEP:
        python = !q->watched;
        break;
    case SVMM_STOP_BUDGET:      /* more: served again after the other ready fds */
        q->polling = 1;
        break;
    default:
        python = 1;
    }
    if (python)
        svmm_hand_over(q);
    return python;
}

/* svmm_serve_queue if q is enabled, with busy set meanwhile (Dekker with svmm_queue_stop:
   busy is stored before enabled is read here, enabled before busy is read there, both
   sequentially consistent).  1 when Python must serve q. */
static int svmm_claim_and_serve(struct svmm_queue *q, int ask)
{
    int python = 1;
    __atomic_store_n(&q->busy, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&q->enabled, __ATOMIC_SEQ_CST)) {
        python = svmm_serve_queue(q, ask);
    } else {            /* stopped meanwhile: Python serves it (and asks for its kicks) */
        q->polling = 0;
        svmm_kick_again(q->kick_fd);
    }
    __atomic_store_n(&q->busy, 0, __ATOMIC_RELEASE);
    return python;
}

/* From any thread: C serves q no more until Python enables it again, and no serving of it
   is still under way when this returns, so the caller may close what its handler uses (a
   hot-replaced image, a tap taken away) or let the driver reuse the rings (a reset). */
void svmm_queue_stop(struct svmm_queue *q)
{
    __atomic_store_n(&q->enabled, 0, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&q->busy, __ATOMIC_SEQ_CST))
        __builtin_ia32_pause();
}

/* One ready fd: read an ioeventfd's count, then serve its queue.  0 when C handled it. */
static int svmm_serve_fd(const struct svmm_kick *k, int ask)
{
    uint64_t count;
    if (!__atomic_load_n(&k->queue->enabled, __ATOMIC_SEQ_CST))
        return 1;
    if (k->is_eventfd && read(k->fd, &count, sizeof count) != sizeof count)
        return 0;                       /* read by someone else meanwhile: nothing to do */
    return svmm_claim_and_serve(k->queue, ask);
}

static int svmm_has_new(const struct svmm_queue *q)
{
    uint8_t *p = svmm_host(q->guest, q->serving->avail_ring + 2, 2);
    return p != NULL && __atomic_load_n((uint16_t *)p, __ATOMIC_ACQUIRE) !=
                        (uint16_t)q->serving->last_avail;
}

/* The queues served to empty without asking for a kick (q->polling): look at their rings for
   up to window ns and serve what the driver adds (no kick, no sleep); when the window
   closes with nothing, ask for each one's next kick (svmm_serve asks, then looks once
   more).  With end set, only ask: the wait is returning to Python.  1 if anything was
   served. */
static int svmm_poll(struct svmm_kick *const *kicks, uint32_t count, int64_t window, int end)
{
    int64_t until = svmm_now_ns() + window;
    int polling, served = 0;
    do {
        polling = 0;
        for (uint32_t i = 0; i < count && !end; i++) {
            struct svmm_queue *q = kicks[i]->queue;
            if (!kicks[i]->is_eventfd || !q->polling)
                continue;
            polling = 1;
            if (svmm_has_new(q)) {
                svmm_claim_and_serve(q, 0);
                served = 1;
            }
        }
        if (served || !polling)
            return served;
        __builtin_ia32_pause();
    } while (svmm_now_ns() < until);
    for (uint32_t i = 0; i < count; i++) {
        struct svmm_queue *q = kicks[i]->queue;
        if (kicks[i]->is_eventfd && q->polling) {
            uint64_t before = q->served;
            svmm_claim_and_serve(q, 1);
            served |= q->served != before;
            if (end && q->polling) {    /* a budget's worth served, more waiting */
                q->polling = 0;
                svmm_kick_again(q->kick_fd);
            }
        }
    }
    return served;
}

/* After a wait that slept for blocked ns (its poll window included): QEMU's aio_poll
   adaptation (poll-grow 2, poll-shrink 0), growing the window only when what woke the
   loop was the kick of a queue served to empty (kicked): a longer poll of that ring
   would have caught it.  Woken by anything else (a tap's frame, a Python fd), or later
   than max_ns, the poll was of no use: none until a kick says otherwise. */
static void svmm_poll_adapt(struct svmm_poll *p, int64_t blocked, int kicked)
{
    if (blocked <= p->ns)
        return;
    if (!kicked || blocked > p->max_ns)
        p->ns = 0;
    else if (p->ns < p->max_ns)
        p->ns = p->ns ? (p->ns * 2 < p->max_ns ? p->ns * 2 : p->max_ns) : SVMM_POLL_GROW_NS;
}

/* Whether events hold the kick of a queue served to empty; forget which ones were. */
static int svmm_kicked_emptied(struct svmm_kick *const *kicks, uint32_t count,
                               const struct epoll_event *events, int ready)
{
    int kicked = 0;
    for (int i = 0; i < ready; i++)
        for (uint32_t j = 0; j < count; j++)
            if (kicks[j]->fd == events[i].data.fd && kicks[j]->is_eventfd
                    && kicks[j]->queue->emptied)
                kicked = 1;
    for (uint32_t j = 0; j < count; j++)
        kicks[j]->queue->emptied = 0;
    return kicked;
}

static const struct svmm_kick *svmm_find(struct svmm_kick *const *kicks, uint32_t count, int fd)
{
    for (uint32_t i = 0; i < count; i++)
        if (kicks[i]->fd == fd)
            return kicks[i];
    return NULL;
}

/* epoll_wait on the loop's epfd until an event Python must see, the timeout (ns, -1: none)
   or, once C served something, slice_ns (Python then folds counters and runs its timers).
   C serves the ready fds in kicks whose queue is enabled (and polls the rings it served,
   poll->ns at a time); the others' (fd, events) pairs go to out (SVMM_WAIT_MAX_EVENTS
   pairs at most) for Python to dispatch.  Returns the pairs, or -1 with *error = errno
   (EINTR: a signal, for Python to handle).  Before returning it asks for the next kick of
   every queue it left unasked. */
int svmm_wait(int epfd, struct svmm_kick *const *kicks, uint32_t count, int64_t timeout_ns,
              int64_t slice_ns, struct svmm_poll *poll, uint32_t *out, int *error)
{
    struct epoll_event events[SVMM_WAIT_MAX_EVENTS];
    int64_t start = svmm_now_ns(), now = start, served = 0;
    int handed = 0;
    for (;;) {
        int ms = -1, ready;
        int64_t began = now;
        if (timeout_ns >= 0) {
            int64_t left = start + timeout_ns - now;
            ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);     /* rounded up */
        }
        if (ms != 0 && svmm_poll(kicks, count, poll->ns, 0)) {
            served = 1;
            ms = 0;                     /* the other fds, then poll again */
        }
        ready = epoll_wait(epfd, events, SVMM_WAIT_MAX_EVENTS, ms);
        if (ready < 0) {
            *error = errno;
            handed = -1;
            break;
        }
        now = svmm_now_ns();
        if (ms != 0)
            svmm_poll_adapt(poll, now - began, svmm_kicked_emptied(kicks, count, events, ready));
        for (int i = 0; i < ready; i++) {
            const struct svmm_kick *k = svmm_find(kicks, count, events[i].data.fd);
            if (k != NULL && !svmm_serve_fd(k, poll->ns == 0)) {
                served = 1;
                continue;
            }
            out[2 * handed] = (uint32_t)events[i].data.fd;
            out[2 * handed + 1] = events[i].events;
            handed++;
        }
        if (handed || (ready == 0 && ms != 0))
            break;
        if ((timeout_ns >= 0 && now - start >= timeout_ns) ||
                (served && now - start >= slice_ns))
            break;
    }
    svmm_poll(kicks, count, 0, 1);
    return handed;
}
"""

ffibuilder.set_source("stratovmm.virtio._ring", _SOURCE + _KICKS + _WAIT)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
