"""The split ring's per-request work in C (``stratovmm.virtio._ring``), under ``SplitQueue``.

``SplitQueue.pop`` and ``SplitQueue.add_used_batch`` are the two calls ``VirtioDevice.serve``
makes per request; with the fast path on, a queue over a ``GuestMemory`` hands them to
``NativeRing``: one C call reads the avail index and head and walks the chain with every
check of ``walk_chain`` (§2.7.5), one C call writes the used elements and ``used->idx``
(§2.7.8.2).  The C code only takes the common case: an empty ring, or a chain that passes
every check.  Anything else — a refused chain, a broken ring — is left to the pure-Python
path, which then reads the same ring again and decides, counts and logs as it always
does, so a guest sees the same device and the same error accounting either way (the
hypothesis tests check both paths against each other on hostile rings).

A device may go further and hand ``serve`` a ``NativeHandler``: its own per-chain handler
in C (built by the plugin with cffi).  ``NativeRing.serve`` then runs the whole batch in
one C call, ``svmm_serve``: pop, the handler, used elements, ``used->idx`` once; no
Python per request.  The handler takes only the requests it is sure of and gives
anything else back (``SVMM_HANDLED_DEFER``) to the device's Python handler, the one the
hypothesis tests hold it to.  Its contract, ``struct svmm_chain`` and the handler's
signature, is versioned by ``HANDLER_ABI`` (docs/plugins.md, "A data path in C").

The switch (``stratovmm.fastpath``): ``STRATOVMM_FASTPATH=0`` in the environment serves every
queue in pure Python; unset or any other value uses the C path (the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stratovmm.memory import GuestMemory, GuestMemoryProtocol
from stratovmm.virtio._ring import ffi, lib
from stratovmm.virtio.chain import Descriptor, DescriptorChain

HANDLER_ABI = int(lib.SVMM_HANDLER_ABI)
HANDLER_ABIS = (1, HANDLER_ABI)     # ABI 2 only added SVMM_HANDLED_PART
# why ``NativeRing.serve`` stopped
STOP_EMPTY, STOP_BUDGET, STOP_DEFER, STOP_KEEP, STOP_INACTIVE = (
    lib.SVMM_STOP_EMPTY, lib.SVMM_STOP_BUDGET, lib.SVMM_STOP_DEFER, lib.SVMM_STOP_KEEP,
    lib.SVMM_STOP_INACTIVE)


class NativeHandler:
    """A device's per-chain handler in C, for ``VirtioDevice.serve(native=...)``.

    ``function`` is the address of an ``int64_t (*)(void *context, const struct svmm_chain
    *)`` compiled against handler ABI ``abi``; ``context`` its first argument; ``owner``
    whatever keeps the memory both point to alive (the plugin's cffi objects).
    """

    __slots__ = ("_context", "_function", "owner")

    def __init__(self, function: int, context: int, owner: object, abi: int) -> None:
        if abi not in HANDLER_ABIS:
            raise ValueError(f"a C handler built for handler ABI {abi}; this core takes"
                             f" {', '.join(map(str, HANDLER_ABIS))}")
        self._function = ffi.cast("svmm_handler", function)
        self._context = ffi.cast("void *", context)
        self.owner = owner


class ActiveFlag:
    """A device's "serving" state where C can read it while Python changes it from another
    thread: ``svmm_serve`` checks it before each chain (a driver reset stops a batch)."""

    __slots__ = ("cell",)

    def __init__(self) -> None:
        self.cell = ffi.new("int *")


class Deferred:
    """``NativeRing.pop``'s answer when the pure-Python path must decide (a refused chain,
    a broken ring): it reads the ring again itself."""


DEFER = Deferred()


class NativeRing:
    """The C side of one split queue of ``size`` entries over ``memory``."""

    @classmethod
    def over(cls, memory: GuestMemoryProtocol, size: int) -> NativeRing | None:
        """The C side for a queue over ``memory``, or None when C cannot reach it (not a
        ``GuestMemory``, or one whose accesses go through a subclass's own methods)."""
        layout = memory.native_layout() if isinstance(memory, GuestMemory) else None
        return None if layout is None else cls(layout, size)

    def __init__(self, layout: tuple[memoryview, int, tuple[tuple[int, int, int], ...]],
                 size: int) -> None:
        pin, base, bounds = layout
        self._pin = pin        # guest RAM stays mapped while C holds its address
        self._regions = ffi.new("struct svmm_region[]", [list(b) for b in bounds] or 1)
        self._guest = ffi.new("struct svmm_guest *", {
            "base": ffi.cast("uint8_t *", base), "regions": self._regions,
            "count": len(bounds)})
        # a chain has at most ``size`` direct buffers, then at most ``size`` indirect ones
        self._addrs = ffi.new("uint64_t[]", 2 * size)
        self._lens = ffi.new("uint32_t[]", 2 * size)
        self._out = ffi.new("uint32_t[4]")
        self._elements = ffi.new("uint32_t[]", 2 * size)
        self._capacity = size
        self._serving: object = None         # made on the first serve: not every queue has
        #                                        a C handler
        self._setting: tuple[object, ...] = ()

    @property
    def guest(self) -> Any:
        """The ``struct svmm_guest *`` C reaches guest RAM through (``svmm_wait``'s queues)."""
        return self._guest

    def serve(self, handler: NativeHandler, active: ActiveFlag, desc_table: int,
              avail_ring: int, used_ring: int, size: int, event_idx: bool, ask_on_empty: bool,
              last_avail: int, next_used: int, budget: int) -> tuple[int, int, int, int]:
        """Up to ``budget`` chains through ``handler`` in one C call; returns (chains served,
        why it stopped, last_avail, next_used).  ``ask_on_empty``: at an empty ring C asks
        for the driver's next kick and looks once more (``SplitQueue.serve_native``)."""
        s = self.serving(handler, active, desc_table, avail_ring, used_ring, size, event_idx,
                         ask_on_empty, last_avail, next_used)
        served = lib.svmm_serve(self._guest, s, min(budget, self._capacity))
        return served, s.stop, s.last_avail, s.next_used

    def serving(self, handler: NativeHandler, active: ActiveFlag, desc_table: int,
                avail_ring: int, used_ring: int, size: int, event_idx: bool,
                ask_on_empty: bool, last_avail: int, next_used: int) -> Any:
        """The ``struct svmm_serving *`` for ``handler`` at ring position (``last_avail``,
        ``next_used``): what ``svmm_serve`` works on, here or in ``svmm_wait``."""
        s: Any = self._serving
        if s is None:
            self._iov = ffi.new("struct iovec[]", 2 * self._capacity)
            s = self._serving = ffi.new("struct svmm_serving *", {
                "addrs": self._addrs, "lens": self._lens, "elements": self._elements,
                "iov": self._iov})
        setting = (desc_table, avail_ring, used_ring, size, event_idx, ask_on_empty, handler,
                   active)
        if setting != self._setting:     # (per queue, the same every call: set once)
            self._setting = setting
            s.desc_table, s.avail_ring, s.used_ring, s.size = setting[:4]
            s.event_idx, s.ask_on_empty = setting[4:6]
            s.handler, s.context, s.active = handler._function, handler._context, active.cell
        s.last_avail, s.next_used = last_avail, next_used
        return s

    def pop(self, desc_table: int, avail_ring: int, size: int,
            last_avail: int) -> DescriptorChain | Deferred | None:
        """The chain at ``last_avail``, None when the ring is empty, or ``DEFER``."""
        out = self._out
        found = lib.svmm_pop(self._guest, desc_table, avail_ring, size, last_avail,
                             self._addrs, self._lens, out)
        if found == lib.SVMM_EMPTY:
            return None
        if found != lib.SVMM_CHAIN or out[3]:
            return DEFER
        count, readable = out[1], out[2]
        addrs = ffi.unpack(self._addrs, count)
        lens = ffi.unpack(self._lens, count)
        return DescriptorChain(
            out[0],
            tuple(Descriptor(addrs[i], lens[i], False) for i in range(readable)),
            tuple(Descriptor(addrs[i], lens[i], True) for i in range(readable, count)))

    def need_event(self, avail_ring: int, size: int, new: int, old: int) -> bool | None:
        """EVENT_IDX: whether ``used_event`` lies in the used entries since ``old`` (after a
        full barrier); None when it lies outside RAM."""
        verdict = lib.svmm_need_event(self._guest, avail_ring, size, new, old)
        return None if verdict < 0 else verdict == 1

    def push_used(self, used_ring: int, size: int, next_used: int,
                  elements: Sequence[tuple[int, int]]) -> int | None:
        """Write ``elements`` and ``used->idx``; the new used index, or None (nothing written)
        when the pure-Python path must do it (more elements than one ring holds, a used
        ring outside RAM: it raises as it always does)."""
        if len(elements) > self._capacity:
            return None
        buffer = self._elements
        for position, (head, length) in enumerate(elements):
            buffer[2 * position] = head
            buffer[2 * position + 1] = length
        used = lib.svmm_push_used(self._guest, used_ring, size, next_used, buffer,
                                  len(elements))
        return None if used < 0 else int(used)
