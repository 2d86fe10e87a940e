"""The split virtqueue (virtio 1.2 §2.7), device side, over any ``GuestMemoryProtocol``.

Pure: no threads, no fds.  The transport configures it; a device pops chains,
completes them and asks whether the driver wants an interrupt.

Two kinds of guest error: a bad *chain* (``ChainError``) refuses one request —
``pop`` completes it with length 0 itself and moves on; a broken *ring*
(``QueueProtocolError``: the avail index jumped by more than the queue size, or
a head index is out of range) means the driver and the device no longer agree
on the ring, so the device must be reset (§2.1.2 DEVICE_NEEDS_RESET).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stratovmm.errors import GuestError
from stratovmm.fastpath import fastpath_enabled
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio._barrier import lib as _barrier
from stratovmm.virtio.chain import ChainError, DescriptorChain, walk_chain
from stratovmm.virtio.constants import AVAIL_F_NO_INTERRUPT, MAX_QUEUE_SIZE, USED_F_NO_NOTIFY
from stratovmm.virtio.native import STOP_DEFER, ActiveFlag, Deferred, NativeHandler, NativeRing

log = logging.getLogger(__name__)
_USED_ELEM = struct.Struct("<II")


class QueueProtocolError(GuestError):
    """The driver broke the ring protocol; the device needs a reset."""


@dataclass
class QueueConfig:
    """What the driver wrote to the transport for one queue (§4.2.2 Queue* registers)."""

    max_size: int
    size: int = 0
    ready: bool = False
    desc_table: int = 0
    avail_ring: int = 0
    used_ring: int = 0

    def __post_init__(self) -> None:
        self.size = self.max_size

    def reset(self) -> None:
        """Back to the power-on values."""
        self.size, self.ready = self.max_size, False
        self.desc_table = self.avail_ring = self.used_ring = 0

    def check(self, memory: GuestMemoryProtocol) -> str | None:
        """Why this configuration cannot be used, or None (§2.7 alignment and sizes)."""
        n = self.size
        if not 0 < n <= min(self.max_size, MAX_QUEUE_SIZE) or n & (n - 1):
            return f"queue size {n} is not a power of 2 in 1..{self.max_size} (§2.7)"
        parts = (("descriptor table", self.desc_table, 16, 16 * n),
                 ("available ring", self.avail_ring, 2, 6 + 2 * n),
                 ("used ring", self.used_ring, 4, 6 + 8 * n))
        for name, addr, align, length in parts:
            if addr % align:
                return f"{name} at {addr:#x} is not {align}-byte aligned (§2.7 table 2.2)"
            if not memory.contains(addr, length):
                return f"{name} {addr:#x}+{length:#x} is outside guest RAM"
        return None


@dataclass
class SplitQueue:
    """A ready split virtqueue as the device drives it."""

    memory: GuestMemoryProtocol
    size: int
    desc_table: int
    avail_ring: int
    used_ring: int
    event_idx: bool = False
    last_avail: int = 0
    next_used: int = 0
    signalled_used: int = 0
    signalled_valid: bool = False
    bad_chains: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    # the C path for pop/add_used_batch (``stratovmm.virtio.native``; STRATOVMM_FASTPATH)
    fastpath: bool = field(default_factory=fastpath_enabled)

    def __post_init__(self) -> None:
        self._native = NativeRing.over(self.memory, self.size) if self.fastpath else None

    @classmethod
    def from_config(cls, memory: GuestMemoryProtocol, config: QueueConfig,
                    event_idx: bool) -> SplitQueue:
        """A queue over the addresses the driver configured (already ``check``-ed)."""
        return cls(memory, config.size, config.desc_table, config.avail_ring, config.used_ring,
                   event_idx)

    # -- available ring ------------------------------------------------------------

    def avail_idx(self) -> int:
        """The driver's ``avail->idx`` (§2.7.6)."""
        return self.memory.read_u16(self.avail_ring + 2)

    def has_available(self) -> bool:
        """True when the driver has made chains available that we have not popped."""
        return self.avail_idx() != self.last_avail

    def pop(self, batch: list[tuple[int, int]] | None = None) -> DescriptorChain | None:
        """The next valid chain, or None when the ring is empty.

        Bad chains are completed with length 0 and skipped (counted in
        ``bad_chains``): appended to ``batch`` when given (the caller's completions not yet
        published, so the used ring keeps the order of the avail ring), else at once.  A
        broken ring raises ``QueueProtocolError``.  The one per-chain walk of
        ``VirtioDevice.serve``; with the fast path, C takes the common case (an empty ring,
        a good chain) and this code everything else.
        """
        if self._native is not None:
            chain = self._native.pop(self.desc_table, self.avail_ring, self.size,
                                     self.last_avail)
            if not isinstance(chain, Deferred):
                if chain is not None:
                    self.last_avail = (self.last_avail + 1) & 0xFFFF
                return chain
        while True:
            avail = self.avail_idx()
            pending = (avail - self.last_avail) & 0xFFFF
            if pending == 0:
                return None
            if pending > self.size:
                raise QueueProtocolError(
                    f"avail idx {avail} is {pending} ahead of {self.last_avail}, more than the"
                    f" queue size {self.size} (§2.7.13.3)")
            slot = self.avail_ring + 4 + 2 * (self.last_avail % self.size)
            head = self.memory.read_u16(slot)
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            if head >= self.size:
                raise QueueProtocolError(f"head index {head} >= queue size {self.size} (§2.7.6)")
            try:
                return walk_chain(self.memory, self.desc_table, self.size, head)
            except ChainError as exc:
                self.bad_chains += 1
                if len(self.errors) < 8:
                    self.errors.append(str(exc))
                log.debug("bad descriptor chain at head %d: %s", head, exc)
                if batch is None:
                    self.add_used(head, 0)
                else:
                    batch.append((head, 0))

    @property
    def has_c_path(self) -> bool:
        """C pops this queue's chains and ``serve_native`` serves them (the fast path is on
        and reaches this queue's memory)."""
        return self._native is not None

    def serve_native(self, handler: NativeHandler, active: ActiveFlag, budget: int,
                     ask_on_empty: bool = False) -> tuple[int, int]:
        """Up to ``budget`` chains through a device's C ``handler`` in one C call (pop,
        handle, used elements, ``used->idx`` once); returns (chains served, why it stopped:
        ``stratovmm.virtio.native.STOP_*``).  At an empty ring (``STOP_EMPTY``), with
        ``ask_on_empty`` C has asked for the driver's next kick and found nothing added
        meanwhile (``set_notification(True)`` and its re-check, going on if chains came);
        without it the caller asks.  Without the C path (``STRATOVMM_FASTPATH=0``,
        or memory C cannot reach) nothing is served and the answer is ``STOP_DEFER``: the
        Python path serves the queue."""
        if self._native is None:
            return 0, STOP_DEFER
        served, stop, self.last_avail, self.next_used = self._native.serve(
            handler, active, self.desc_table, self.avail_ring, self.used_ring, self.size,
            self.event_idx, ask_on_empty, self.last_avail, self.next_used, budget)
        self.completed += served
        return served, stop

    def native_serving(self, handler: NativeHandler, active: ActiveFlag) -> Any:
        """C's serving state for ``handler`` at this queue's position, for the loop's wait to
        serve kicks with (``stratovmm.virtio.kicks``); None without the C path."""
        if self._native is None:
            return None
        return self._native.serving(handler, active, self.desc_table, self.avail_ring,
                                    self.used_ring, self.size, self.event_idx, False,
                                    self.last_avail, self.next_used)

    def native_guest(self) -> Any:
        """The ``struct svmm_guest *`` of the C path (which must be there: ``has_c_path``)."""
        assert self._native is not None
        return self._native.guest

    def unpop(self) -> None:
        """Give back the chain ``pop`` just returned: the next ``pop`` walks (and checks) it
        again.  For a device that cannot take that chain now, as QEMU's virtqueue_unpop."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    # -- used ring -------------------------------------------------------------------

    def add_used(self, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written (§2.7.8)."""
        self.add_used_batch(((head, length),))

    def add_used_batch(self, elements: Sequence[tuple[int, int]]) -> None:
        """Return the chains ``(head, length)`` with one ``used->idx`` store after the last
        element (§2.7.8.2: the elements are written before idx), so the driver sees them
        together: the buffers of one merged receive frame (§5.1.6.4) never appear one by
        one, as QEMU's virtqueue_fill + virtqueue_flush.  ``VirtioDevice.serve`` completes
        each item with one call; with the fast path, one C call does it."""
        if not elements:
            return
        if self._native is not None:
            used = self._native.push_used(self.used_ring, self.size, self.next_used, elements)
            if used is not None:
                self.next_used = used
                self.completed += len(elements)
                return
        used = self.next_used
        for head, length in elements:
            slot = self.used_ring + 4 + 8 * (used % self.size)
            self.memory.write(slot, _USED_ELEM.pack(head, length))
            used = (used + 1) & 0xFFFF
        self.next_used = used
        self.memory.write_u16(self.used_ring + 2, used)
        self.completed += len(elements)

    def needs_interrupt(self) -> bool:
        """Whether the driver asked to be interrupted for what was just used (§2.7.7).

        With EVENT_IDX: only when ``used_event`` lies in the range of used entries
        added since the last interrupt (``vring_need_event``); without it, unless
        the driver set ``VIRTQ_AVAIL_F_NO_INTERRUPT``.
        """
        new = self.next_used
        if self.event_idx and self.signalled_valid and self._native is not None:
            verdict = self._native.need_event(self.avail_ring, self.size, new,
                                              self.signalled_used)     # (the same, in C)
            if verdict is not None:
                self.signalled_used = new
                return verdict
        # our used->idx store must be visible before we read the driver's suppression
        # fields, or both sides may decide the other will act (QEMU: smp_mb() here)
        _barrier.svmm_full_barrier()
        if not self.event_idx:
            flags = self.memory.read_u16(self.avail_ring)
            return not flags & AVAIL_F_NO_INTERRUPT
        old = self.signalled_used
        valid = self.signalled_valid
        self.signalled_used, self.signalled_valid = new, True
        if not valid:
            return True
        used_event = self.memory.read_u16(self.avail_ring + 4 + 2 * self.size)
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    # -- driver notifications ------------------------------------------------------------

    def set_notification(self, enable: bool) -> bool:
        """Ask the driver to kick (or not) for new buffers; True if more are already there.

        With EVENT_IDX the device writes ``avail_event`` = the next index it will
        look at (§2.7.10); otherwise it sets or clears ``VIRTQ_USED_F_NO_NOTIFY``.
        The re-check after enabling closes the race with a driver that added a
        buffer just before seeing the new value.
        """
        if self.event_idx:
            if enable:
                self.memory.write_u16(self.used_ring + 4 + 8 * self.size, self.last_avail)
        else:
            self.memory.write_u16(self.used_ring, 0 if enable else USED_F_NO_NOTIFY)
        if not enable:
            return False
        _barrier.svmm_full_barrier()   # store above, then load of avail->idx: no reordering
        return self.has_available()
