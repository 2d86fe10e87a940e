"""cffi (API mode) builder for ``stratovmm_blk._fast``: virtio-blk's reads and writes in C.

``svmm_blk_request`` is a per-chain handler for the core's C serving loop
(``stratovmm.virtio.native``, handler ABI 1): it takes the request as Linux frames it
(§5.2.6: a 16-byte header descriptor, data descriptors, a 1-byte status descriptor),
checks it as ``BlockDevice`` does (data a multiple of 512 bytes, the range inside the
capacity, no write to a read-only drive, O_DIRECT alignment), moves the data with one
``preadv``/``pwritev`` straight between the image and guest RAM, and stores the status.
Everything else — flush, get-id, unknown types, other framings, bad requests, host
errors and short transfers (reads and writes are idempotent, so Python doing one again
is harmless) — is given back (``SVMM_HANDLED_DEFER``) to the Python handler, which
answers, counts and logs it.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef("""
#define SVMM_HANDLER_ABI ...
struct svmm_blk { int fd; int read_only; int direct; uint64_t sectors; uint64_t counts[3]; };
struct svmm_chain;
int64_t svmm_blk_request(void *context, const struct svmm_chain *chain);
""")

ffibuilder.set_source("stratovmm_blk._fast", r"""
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* handler ABI 1 of the core's serving loop (stratovmm.virtio.native) */
#define SVMM_HANDLER_ABI 1
#define SVMM_HANDLED_DEFER (-1)
struct svmm_chain { uint32_t head; uint32_t count; uint32_t readable; uint32_t reserved;
                    const struct iovec *iov; };

/* counts: what NativeBlk.fold adds to the device's counters, in its order */
struct svmm_blk { int fd; int read_only; int direct; uint64_t sectors; uint64_t counts[3]; };
#define REQUESTS 0
#define BYTES_READ 1
#define BYTES_WRITTEN 2

#define T_IN 0
#define T_OUT 1
#define SECTOR 512
#define DIRECT_ALIGN 512

/* O_DIRECT can take the guest buffers as they are (the file offset, a sector multiple,
   always is): every address and length a multiple of the logical block size. */
static int svmm_blk_aligned(const struct iovec *iov, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) % DIRECT_ALIGN)
            return 0;
    return 1;
}

int64_t svmm_blk_request(void *context, const struct svmm_chain *chain)
{
    struct svmm_blk *blk = context;
    const struct iovec *iov = chain->iov;
    uint32_t type, last = chain->count - 1, data = chain->count - 2;
    uint64_t sector, length = 0;
    ssize_t done;
    /* Linux's framing: header alone, status alone and last (§5.2.6) */
    if (chain->count < 2 || iov[0].iov_len != 16 || iov[last].iov_len != 1
            || chain->readable == chain->count || chain->readable == 0)
        return SVMM_HANDLED_DEFER;
    memcpy(&type, iov[0].iov_base, 4);          /* the guest may rewrite it: read once */
    memcpy(&sector, (const uint8_t *)iov[0].iov_base + 8, 8);
    if (type == T_IN ? chain->readable != 1
            : type != T_OUT || blk->read_only || chain->readable != last)
        return SVMM_HANDLED_DEFER;
    for (uint32_t i = 1; i <= data; i++)
        length += iov[i].iov_len;
    /* §5.2.6.1: whole sectors, inside the capacity (no overflow: sector is checked first) */
    if (length % SECTOR || sector > blk->sectors || length / SECTOR > blk->sectors - sector)
        return SVMM_HANDLED_DEFER;
    if (blk->direct && !svmm_blk_aligned(iov + 1, data))
        return SVMM_HANDLED_DEFER;
    if (type == T_IN)
        done = preadv(blk->fd, iov + 1, (int)data, (off_t)(sector * SECTOR));
    else
        done = pwritev(blk->fd, iov + 1, (int)data, (off_t)(sector * SECTOR));
    if (done < 0 || (uint64_t)done != length)
        return SVMM_HANDLED_DEFER;
    *(uint8_t *)iov[last].iov_base = 0;         /* VIRTIO_BLK_S_OK */
    blk->counts[REQUESTS]++;
    if (type == T_IN) {
        blk->counts[BYTES_READ] += length;
        return (int64_t)length + 1;
    }
    blk->counts[BYTES_WRITTEN] += length;
    return 1;
}
""")

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
