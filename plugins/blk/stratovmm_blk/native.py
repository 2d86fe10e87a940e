"""The blk C handler (``stratovmm_blk._fast``) as the core's serving loop takes it.

One ``NativeBlk`` per open image: the C side reads the image's fd, capacity, read-only
and O_DIRECT flags from it and counts the requests it completes there; ``fold`` moves
those counts into the device's counters after each serving batch, so ``query-stats``
shows the same figures whichever path served a request.
"""

from __future__ import annotations

from stratovmm.api import NativeHandler
from stratovmm_blk._fast import ffi, lib
from stratovmm_blk.backend import BlockBackend

# svmm_blk.counts, in order
_COUNTERS = ("requests", "bytes_read", "bytes_written")
_ZEROS = bytes(8 * len(_COUNTERS))


class NativeBlk:
    """The C handler over ``backend``'s image."""

    def __init__(self, backend: BlockBackend) -> None:
        self._state = ffi.new("struct svmm_blk *", {
            "fd": backend.fd, "read_only": int(backend.read_only),
            "direct": int(backend.direct), "sectors": backend.sectors})
        self.handler = NativeHandler(
            int(ffi.cast("uintptr_t", ffi.addressof(lib, "svmm_blk_request"))),
            int(ffi.cast("uintptr_t", self._state)), self._state, lib.SVMM_HANDLER_ABI)

    def unfolded(self) -> dict[str, int]:
        """What C counted since the last ``fold`` (read only: any thread)."""
        values = ffi.unpack(self._state.counts, len(_COUNTERS))
        return {name: value for name, value in zip(_COUNTERS, values, strict=True) if value}

    def fold(self, counters: dict[str, int]) -> None:
        """Add what C counted since the last call to ``counters``."""
        counts = self._state.counts
        values = ffi.unpack(counts, len(_COUNTERS))
        if values[0]:
            for name, value in zip(_COUNTERS, values, strict=True):
                if value:
                    counters[name] += value
            ffi.memmove(counts, _ZEROS, len(_ZEROS))
