"""virtio-rng (virtio 1.2 §5.4): one request queue; the driver posts writable
buffers and the device fills them with entropy from the host file.

Data goes straight from the file into guest memory (``os.readv`` on the
chain's memoryviews).  Requests are served by the core's ``serve`` (a budget of
requests per loop turn); ``bytes_per_sec`` is its byte limit, a token bucket:
each request is offered at most the bytes the bucket holds, and when it is empty
the queue waits for tokens on one loop timer, so a greedy guest neither spins
the host nor starves others.  A regular file is read in a loop (back to its
start at EOF).
"""

from __future__ import annotations

import logging
import os

from stratovmm.api import (
    ID_RNG,
    DescriptorChain,
    EventLoop,
    TokenBucket,
    VirtioDevice,
    skip_views,
    trim_views,
)

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
MAX_REQUEST = 64 * 1024     # host bytes per request, whatever the guest asks for


class RngDevice(VirtioDevice):
    """Entropy from ``path`` for the guest's hw_random driver."""

    DEVICE_TYPE = ID_RNG
    QUEUE_SIZES = (QUEUE_SIZE,)

    def __init__(self, device_id: str, path: str, loop: EventLoop,
                 bytes_per_sec: int | None = None) -> None:
        super().__init__(device_id)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._regular = os.path.isfile(path)
        self.loop = loop
        self._bucket = TokenBucket(bytes_per_sec) if bytes_per_sec else None

    def handle_queue(self, index: int) -> None:
        """Serve requests until the queue is empty, this turn's budget is spent or the rate
        limit says wait."""
        self.serve(index, self._fill, byte_limit=self._bucket)

    def _fill(self, chain: DescriptorChain) -> int:
        """Fill one request with at most ``MAX_REQUEST`` bytes (§5.4.6.2: the device may use
        less than the whole buffer)."""
        assert self.memory is not None
        done = self._read_into(trim_views(chain.write_views(self.memory), MAX_REQUEST))
        self.counters["requests"] += 1
        self.counters["bytes_read"] += done
        return done

    def _read_into(self, views: list[memoryview]) -> int:
        total = sum(len(v) for v in views)
        done = 0
        while done < total:
            remaining = skip_views(views, done)
            try:
                n = os.readv(self._fd, remaining)
            except OSError as exc:
                self.counters["errors"] += 1
                log.error("%s: reading the entropy file failed: %s", self.id, exc)
                break
            if n == 0:
                if not self._regular or (done == 0 and os.lseek(self._fd, 0, os.SEEK_CUR) == 0):
                    break
                os.lseek(self._fd, 0, os.SEEK_SET)
                continue
            done += n
        return done

    def close(self) -> None:
        """Close the entropy file."""
        os.close(self._fd)

