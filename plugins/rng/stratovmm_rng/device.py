"""virtio-rng (virtio 1.2 §5.4): one request queue; the driver posts writable
buffers and the device fills them with entropy from the host file.

Data goes straight from the file into guest memory (``os.readv`` on the
chain's memoryviews).  Requests are served by the core's ``drain`` (a budget of
requests per loop turn); ``bytes_per_sec`` is a token bucket, its gate: when it
is empty the device stops popping requests until enough tokens have accrued
(one loop timer), so a greedy guest neither spins the host nor starves others.
A regular file is read in a loop (back to its start at EOF).
"""

from __future__ import annotations

import logging
import os

from stratovmm.api import ID_RNG, DescriptorChain, EventLoop, TokenBucket, VirtioDevice

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
        self.drain(index, self._fill, gate=self._tokens_gate)

    def _tokens_gate(self) -> float | None:
        """None while the bucket has a token; else how long until it has one."""
        bucket = self._bucket
        if bucket is None or bucket.available() > 0:
            return None
        return max(bucket.delay_for(1), 0.001)

    def _fill(self, chain: DescriptorChain) -> int:
        assert self.memory is not None
        want = min(chain.writable_len, MAX_REQUEST)
        if self._bucket is not None:
            want = self._bucket.take(want)
        views = []
        for view in chain.write_views(self.memory):
            if want <= 0:
                break
            views.append(view[:want])
            want -= len(views[-1])
        done = self._read_into(views)
        self.counters["requests"] += 1
        self.counters["bytes_read"] += done
        return done

    def _read_into(self, views: list[memoryview]) -> int:
        total = sum(len(v) for v in views)
        done = 0
        while done < total:
            remaining = _skip(views, done)
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


def _skip(views: list[memoryview], offset: int) -> list[memoryview]:
    """The views with the first ``offset`` bytes removed."""
    out = []
    for view in views:
        if offset >= len(view):
            offset -= len(view)
            continue
        out.append(view[offset:])
        offset = 0
    return out
