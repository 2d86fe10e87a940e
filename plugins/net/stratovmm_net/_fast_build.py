"""cffi (API mode) builder for ``stratovmm_net._fast``: virtio-net's frames in C.

Two per-chain handlers for the core's C serving loop (``stratovmm.virtio.native``,
handler ABI 2), each taking only what it is sure of and giving everything else back
(``SVMM_HANDLED_DEFER``) to ``NetDevice``'s Python handlers, which answer, count and log:

- ``svmm_net_transmit``: one chain, header + frame, all device-readable, the header
  checked against the accepted features exactly as ``NetDevice._check_tx_header``
  (§5.1.6.2.1), written to the tap with one ``writev`` straight from guest RAM; a tap
  whose queue is full drops the frame (counted), as a NIC would;
- ``svmm_net_receive``: one ``readv`` from the tap into the chain's buffers plus a host
  overflow buffer behind them; a frame that fits is used with ``num_buffers`` = 1
  (§5.1.6.4); with no frame waiting, the chain stays in the ring (``SVMM_HANDLED_KEEP``)
  and the device watches the tap.  A runt is dropped and counted, and so is a frame
  larger than the chain without VIRTIO_NET_F_MRG_RXBUF (§5.1.6.3.1); with it, the frame
  goes on in the next chains (``SVMM_HANDLED_PART``): C copies its tail, which the
  ``readv`` put in the overflow buffer, into the chains that follow, as
  ``NetDevice._place_tail`` does, and the core uses them together.  When serving stops
  before the frame is whole (no more chains, the budget, a chain C refuses), the core
  gives its chains back to the ring and Python places it (``spill_size``: its size, its
  tail still in the overflow buffer), as it does for its own frames.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
#define SVMM_HANDLER_ABI ...
struct svmm_net {
    int fd; uint64_t acked; int mergeable; uint8_t *overflow; int waiting;
    uint32_t spill_size; uint32_t spill_first; uint64_t counts[6];
    int spilling; uint32_t spill_head; uint32_t spill_done; uint32_t spill_chains;
    uint8_t *spill_header;
};
struct svmm_chain;
int64_t svmm_net_transmit(void *context, const struct svmm_chain *chain);
int64_t svmm_net_receive(void *context, const struct svmm_chain *chain);
""")

ffibuilder.set_source("stratovmm_net._fast", r"""
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* handler ABI 2 of the core's serving loop (stratovmm.virtio.native) */
#define SVMM_HANDLER_ABI 2
#define SVMM_HANDLED_DEFER (-1)
#define SVMM_HANDLED_KEEP (-2)
#define SVMM_HANDLED_PART(len) (-((int64_t)1 << 32) - (int64_t)(len))
struct svmm_chain { uint32_t head; uint32_t count; uint32_t readable; uint32_t reserved;
                    const struct iovec *iov; };

/* fd: the tap, -1 while there is none that works (Python drops and counts); acked and
   mergeable: the driver's features; overflow: MAX_PACKET + 1 bytes; waiting: set when
   receive found no frame; spill_size, spill_first: a frame larger than its first chain
   (MRG_RXBUF), and the bytes that chain took, until its tail is placed (its tail is at
   the start of overflow); counts: what NativeNet.fold adds to the device's counters, in
   its order; spilling, spill_head, spill_done, spill_chains, spill_header: C placing that
   tail in the chains that follow (the frame's first chain, the bytes of the frame placed,
   the chains used, the first one's header), until the frame is whole — or the core gives
   its chains back to the ring (offered its first chain again, C knows) and Python places
   it (NativeNet.take_spill) */
struct svmm_net {
    int fd; uint64_t acked; int mergeable; uint8_t *overflow; int waiting;
    uint32_t spill_size; uint32_t spill_first; uint64_t counts[6];
    int spilling; uint32_t spill_head; uint32_t spill_done; uint32_t spill_chains;
    uint8_t *spill_header;
};
#define TX_PACKETS 0
#define TX_BYTES 1
#define TX_DROPPED 2
#define RX_PACKETS 3
#define RX_BYTES 4
#define RX_DROPPED 5

#define VNET_HDR_LEN 12
#define ETH_HLEN 14
#define MAX_PACKET (VNET_HDR_LEN + 65550)
#define MAX_IOV 1024                     /* IOV_MAX: what one readv takes */
#define F_CSUM 0
#define F_HOST_TSO4 11
#define F_HOST_TSO6 12
#define F_HOST_ECN 13
#define F_HOST_UFO 14
#define NEEDS_CSUM 1
#define GSO_ECN 0x80

static int has(uint64_t acked, int bit) { return (acked >> bit) & 1; }

/* NetDevice._check_tx_header: may the driver send this header (§5.1.6.2.1)? */
static int svmm_net_header_ok(uint64_t acked, const uint8_t *hdr, uint64_t frame_len)
{
    uint8_t flags = hdr[0], gso_type = hdr[1], kind = gso_type & ~GSO_ECN;
    uint16_t gso_size, csum_start, csum_offset;
    int feature;
    memcpy(&gso_size, hdr + 4, 2);
    memcpy(&csum_start, hdr + 6, 2);
    memcpy(&csum_offset, hdr + 8, 2);
    if (flags & ~NEEDS_CSUM)
        return 0;
    if (flags & NEEDS_CSUM) {
        if (!has(acked, F_CSUM) || (uint64_t)csum_start + csum_offset + 2 > frame_len)
            return 0;
    }
    if (kind == 0)
        return !(gso_type & GSO_ECN);
    feature = kind == 1 ? F_HOST_TSO4 : kind == 4 ? F_HOST_TSO6 : kind == 3 ? F_HOST_UFO : -1;
    if (feature < 0 || !has(acked, feature))
        return 0;
    if ((gso_type & GSO_ECN) && !has(acked, F_HOST_ECN))
        return 0;
    return (flags & NEEDS_CSUM) && gso_size != 0;
}

int64_t svmm_net_transmit(void *context, const struct svmm_chain *chain)
{
    struct svmm_net *net = context;
    const struct iovec *iov = chain->iov;
    uint8_t hdr[VNET_HDR_LEN];
    uint64_t total = 0;
    if (net->fd < 0 || chain->readable != chain->count || iov[0].iov_len < VNET_HDR_LEN
            || chain->count > MAX_IOV)
        return SVMM_HANDLED_DEFER;
    for (uint32_t i = 0; i < chain->count; i++)
        total += iov[i].iov_len;
    if (total < VNET_HDR_LEN + ETH_HLEN || total > MAX_PACKET)
        return SVMM_HANDLED_DEFER;
    memcpy(hdr, iov[0].iov_base, VNET_HDR_LEN);
    if (!svmm_net_header_ok(net->acked, hdr, total - VNET_HDR_LEN))
        return SVMM_HANDLED_DEFER;
    if (writev(net->fd, iov, (int)chain->count) < 0) {
        if (errno != EAGAIN)
            return SVMM_HANDLED_DEFER;      /* the Python path sees the error itself */
        net->counts[TX_DROPPED]++;                  /* the tap's queue is full: a NIC drops too */
        return 0;
    }
    net->counts[TX_PACKETS]++;
    net->counts[TX_BYTES] += total - VNET_HDR_LEN;
    return 0;
}

/* The next chain of a frame being spilled (§5.1.6.4): as much of the tail as it holds
   (NetDevice._place_tail); the last one sets num_buffers in the first chain's header. */
static int64_t svmm_net_spill_on(struct svmm_net *net, const struct svmm_chain *chain)
{
    const uint8_t *tail = net->overflow + (net->spill_done - net->spill_first);
    uint32_t left = net->spill_size - net->spill_done, placed = 0;
    uint16_t chains;
    if (chain->readable != 0 || chain->iov[0].iov_len < VNET_HDR_LEN)
        return SVMM_HANDLED_DEFER;          /* _rx_buffer_problem: Python's to count */
    for (uint32_t i = 0; i < chain->count && placed < left; i++) {
        uint32_t n = chain->iov[i].iov_len < left - placed
                     ? (uint32_t)chain->iov[i].iov_len : left - placed;
        memcpy(chain->iov[i].iov_base, tail + placed, n);
        placed += n;
    }
    net->spill_done += placed;
    net->spill_chains++;
    if (net->spill_done < net->spill_size)
        return SVMM_HANDLED_PART(placed);
    chains = (uint16_t)net->spill_chains;
    memcpy(net->spill_header + 10, &chains, 2);        /* num_buffers */
    net->counts[RX_PACKETS]++;
    net->counts[RX_BYTES] += (uint64_t)net->spill_size - VNET_HDR_LEN;
    net->spilling = 0;
    net->spill_size = net->spill_first = 0;
    return placed;
}

int64_t svmm_net_receive(void *context, const struct svmm_chain *chain)
{
    struct svmm_net *net = context;
    struct iovec iov[MAX_IOV];
    uint64_t capacity = 0;
    uint16_t one = 1;
    ssize_t size;
    if (net->spilling)      /* its first chain again: the core gave them back, Python's */
        return chain->head == net->spill_head ? SVMM_HANDLED_DEFER
                                              : svmm_net_spill_on(net, chain);
    if (net->fd < 0 || net->spill_size || chain->readable != 0
            || chain->iov[0].iov_len < VNET_HDR_LEN || chain->count >= MAX_IOV)
        return SVMM_HANDLED_DEFER;
    for (uint32_t i = 0; i < chain->count; i++) {
        iov[i] = chain->iov[i];
        capacity += iov[i].iov_len;
    }
    /* behind the buffers: a frame larger than them is seen whole, and dropped */
    iov[chain->count].iov_base = net->overflow;
    iov[chain->count].iov_len = capacity > MAX_PACKET ? 1 : MAX_PACKET + 1 - capacity;
    size = readv(net->fd, iov, (int)chain->count + 1);
    if (size < 0 && (errno == EAGAIN || errno == EINTR)) {
        net->waiting = 1;
        return SVMM_HANDLED_KEEP;
    }
    if (size <= 0)
        return SVMM_HANDLED_DEFER;          /* a broken tap: Python reads, fails, says so */
    if (size < VNET_HDR_LEN + ETH_HLEN || size > MAX_PACKET
            || ((uint64_t)size > capacity && !net->mergeable)) {
        net->counts[RX_DROPPED]++;          /* §5.1.6.3.1: larger than the buffer */
        return SVMM_HANDLED_DEFER;
    }
    if ((uint64_t)size > capacity) {        /* §5.1.6.4: on into the next chains */
        net->spill_size = (uint32_t)size;
        net->spill_first = (uint32_t)capacity;
        net->spilling = 1;
        net->spill_head = chain->head;
        net->spill_done = (uint32_t)capacity;
        net->spill_chains = 1;
        net->spill_header = iov[0].iov_base;
        return SVMM_HANDLED_PART(capacity);
    }
    memcpy((uint8_t *)iov[0].iov_base + 10, &one, 2);   /* num_buffers (§5.1.6.4) */
    net->counts[RX_PACKETS]++;
    net->counts[RX_BYTES] += (uint64_t)size - VNET_HDR_LEN;
    return size;
}
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
