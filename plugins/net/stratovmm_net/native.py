"""The net C handlers (``stratovmm_net._fast``) as the core's serving loop takes them.

One ``NativeNet`` per device: the C side reads the tap's fd and the accepted features
from it (``sync``, before each serving batch: a tap may come, go or break, and features
are negotiated after the device is made) and counts the frames it moves there; ``fold``
moves those counts into the device's counters, so ``query-stats`` shows the same
figures whichever path moved a frame.
"""

from __future__ import annotations

from stratovmm.api import NativeHandler
from stratovmm_net._fast import ffi, lib

# svmm_net.counts, in order
_COUNTERS = ("tx_packets", "tx_bytes", "tx_dropped", "rx_packets", "rx_bytes", "rx_dropped")
_ZEROS = bytes(8 * len(_COUNTERS))


class NativeNet:
    """The C transmit and receive handlers of one NIC."""

    def __init__(self, overflow: bytearray) -> None:
        # the device's overflow buffer (MAX_PACKET + 1 bytes): C and Python read frames
        # into it by turns, on the device's loop
        self._overflow = ffi.from_buffer("uint8_t[]", overflow)
        self._state = ffi.new("struct svmm_net *", {"fd": -1, "overflow": self._overflow})
        self._counts = self._state.counts        # (a view into _state, made once)
        self._setting: tuple[int | None, int, bool] = (None, 0, False)
        context = int(ffi.cast("uintptr_t", self._state))
        self.transmit = self._handler("svmm_net_transmit", context)
        self.receive = self._handler("svmm_net_receive", context)

    def _handler(self, name: str, context: int) -> NativeHandler:
        return NativeHandler(int(ffi.cast("uintptr_t", ffi.addressof(lib, name))), context,
                             self, lib.SVMM_HANDLER_ABI)

    def sync(self, fd: int | None, acked: int, mergeable: bool) -> None:
        """The tap C may use (None: none that works) and the driver's features."""
        state = self._state
        setting = (fd, acked, mergeable)
        if setting != self._setting:       # (the same on almost every call)
            self._setting = setting
            state.fd = -1 if fd is None else fd
            state.acked = acked
            state.mergeable = mergeable
        state.waiting = 0

    @property
    def spill_size(self) -> int:
        """The size of a frame C read whose first chain could not hold it all (with
        MRG_RXBUF), until ``take_spill``: the device places the rest; 0 when none."""
        return int(self._state.spill_size)

    def take_spill(self) -> tuple[int, int]:
        """The spilled frame's size and the bytes of it its first chain took (the rest is
        at the start of the overflow buffer); C may read frames again once the device has
        copied that rest out."""
        state = self._state
        size, first = int(state.spill_size), int(state.spill_first)
        state.spill_size = state.spill_first = state.spilling = 0
        return size, first

    def drop_spill(self) -> None:
        """Forget a spilled frame (a reset, a tap taken away)."""
        state = self._state
        state.spill_size = state.spill_first = state.spilling = 0

    @property
    def waiting(self) -> bool:
        """Receive stopped on a chain because the tap had no frame for it (the chain is
        still in the ring): the device should watch the tap."""
        return bool(self._state.waiting)

    def unfolded(self) -> dict[str, int]:
        """What C counted since the last ``fold`` (read only: any thread)."""
        values = ffi.unpack(self._state.counts, len(_COUNTERS))
        return {name: value for name, value in zip(_COUNTERS, values, strict=True) if value}

    def fold(self, counters: dict[str, int]) -> None:
        """Add what C counted since the last call to ``counters``."""
        counts = self._counts
        values = ffi.unpack(counts, len(_COUNTERS))
        if any(values):
            for name, value in zip(_COUNTERS, values, strict=True):
                if value:
                    counters[name] += value
            ffi.memmove(counts, _ZEROS, len(_ZEROS))
