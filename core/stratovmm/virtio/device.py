"""``VirtioDevice``: what a virtio device plugin subclasses.

A subclass sets ``DEVICE_TYPE`` (§5 device id) and ``QUEUE_SIZES`` (the maximum
size of each queue), offers its feature bits in ``device_features()``, exposes
its configuration space in ``config_space()``, and handles a kicked queue in
``handle_queue(index)``, usually by giving ``drain`` its per-chain handler.
Everything else — feature negotiation, queue setup, ioeventfd/irqfd, reset — is
the transport's job.

``drain`` is the one serving loop: a budget of chains per loop turn (the rest is
served on a later turn, so one guest cannot starve QMP or the other devices of
its loop), an optional gate (a rate limiter, a full host buffer), bad-chain
accounting, notification re-enabling, one interrupt per batch, and a request
that raises ``GuestError`` completed with length 0 instead of lost.

Threading: ``activate``, ``handle_queue`` and ``reset`` run on the device's own
loop (the main loop or its ``iothread``); ``read_config``/``write_config`` and
``quiesce`` run on vCPU threads, so mutable config state needs ``self.lock``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Protocol

from stratovmm.devices.counters import DeviceCounters
from stratovmm.errors import GuestError
from stratovmm.host.eventloop import EventLoop, Timer
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio.chain import DescriptorChain
from stratovmm.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1
from stratovmm.virtio.queue import QueueProtocolError, SplitQueue

log = logging.getLogger(__name__)

BASE_FEATURES = (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
DRAIN_BUDGET = 64       # chains one queue may complete per loop turn
STOP = math.inf         # a gate's answer: stop now; whoever unblocks the queue serves it again

# ``drain``'s handler: the bytes written into the chain, or None to keep the chain (e.g. an
# rx buffer with nothing to carry yet): it is handed to the handler again next time.
ChainHandler = Callable[[DescriptorChain], "int | None"]
# ``drain``'s gate, asked before each chain: None to go on, or seconds until the queue is
# worth serving again (``STOP``: do not retry on a timer).
Gate = Callable[[], "float | None"]


class Interrupt(Protocol):
    """How a device reaches its driver (implemented by the transport)."""

    def signal_used(self) -> None: ...
    def signal_config(self) -> None: ...
    def needs_reset(self) -> None: ...


class VirtioDevice(DeviceCounters):
    """Base class of every virtio device model."""

    DEVICE_TYPE = 0
    QUEUE_SIZES: tuple[int, ...] = ()
    DRAIN_BUDGET = DRAIN_BUDGET       # chains per queue per loop turn, unless drain is told

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.lock = threading.Lock()
        self.acked_features = 0
        self.memory: GuestMemoryProtocol | None = None
        self.queues: list[SplitQueue | None] = []
        self.interrupt: Interrupt | None = None
        self.loop: EventLoop | None = None
        self.active = False
        # (prefixed: subclasses have their own ``_held``, ``_pending``, ...)
        self._drain_held: dict[int, DescriptorChain] = {}   # queue -> chain its handler kept
        self._drain_retries: dict[int, object] = {}         # queue -> its one pending retry
        self.init_counters()

    # -- what subclasses describe ---------------------------------------------------

    def device_features(self) -> int:
        """Device-specific feature bits offered to the driver (beyond VERSION_1 etc.)."""
        return 0

    @property
    def avail_features(self) -> int:
        """Every feature bit offered."""
        return BASE_FEATURES | self.device_features()

    def has_feature(self, bit: int) -> bool:
        """True when the driver accepted feature ``bit``."""
        return bool(self.acked_features & (1 << bit))

    def config_space(self) -> bytes:
        """The device configuration space (§4.2.2 offset 0x100 onwards)."""
        return b""

    def read_config(self, offset: int, size: int) -> bytes:
        """A driver read of the config space; bytes past its end read as 0."""
        with self.lock:
            space = self.config_space()
        return space[offset : offset + size].ljust(size, b"\0")

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write of the config space: read-only unless a subclass says otherwise."""
        self.guest_fault("config-write", f"write of {len(data)} bytes at config offset {offset}")

    # -- lifecycle (device loop) --------------------------------------------------------

    def activate(self, memory: GuestMemoryProtocol, queues: list[SplitQueue | None],
                 interrupt: Interrupt, loop: EventLoop) -> None:
        """The driver set DRIVER_OK: start serving ``queues`` (None = not set up) on
        ``loop``, the loop this call runs on."""
        self.memory = memory
        self.queues = queues
        self.interrupt = interrupt
        self.loop = loop
        self.active = True
        self.on_activate()
        for index, queue in enumerate(queues):
            if queue is not None:
                self.process_queue(index)

    def on_activate(self) -> None:
        """Hook for subclasses: register host fds, start timers."""

    def quiesce(self) -> None:
        """The driver wrote 0 to Status (any thread, usually a vCPU): touch no ring from the
        next chain on (§2.4.1: once the reset is visible the device must not interact with
        the queues); ``reset`` follows on the device loop."""
        self.active = False

    def reset(self) -> None:
        """The driver reset the device: forget every queue, held chain and pending retry."""
        self.active = False
        for token in self._drain_retries.values():
            if isinstance(token, Timer):
                token.cancel()
        self._drain_retries.clear()
        self._drain_held.clear()
        self.on_reset()
        self.queues = []
        self.acked_features = 0

    def on_reset(self) -> None:
        """Hook for subclasses: drop host-side state tied to the old queues."""

    def close(self) -> None:
        """The VM is ending: release host resources."""

    # -- queue processing (device loop) ---------------------------------------------------

    def process_queue(self, index: int) -> None:
        """A kick on queue ``index``: let the subclass handle it, keep the guest honest.

        Nothing raises out of here to the loop: a broken ring, or a request the device
        lost track of, stops the device with DEVICE_NEEDS_RESET (§2.1.2), logged once."""
        if not self.active or index >= len(self.queues) or self.queues[index] is None:
            return
        try:
            self.handle_queue(index)
        except QueueProtocolError as exc:
            self.guest_fault("ring", f"queue {index}: {exc}")
            self._stop()
        except GuestError as exc:
            self.guest_fault("request", f"queue {index}: {exc}; the device needs a reset")
            self._stop()
        except Exception:
            self.counters["internal_errors"] += 1
            if "internal" not in self._logged:
                self._logged.add("internal")
                log.exception("%s: serving queue %d failed; the device needs a reset (logged"
                              " once; counted in internal_errors)", self.id, index)
            self._stop()

    def _stop(self) -> None:
        """Serve nothing more until the driver resets the device (§2.1.2)."""
        self.active = False
        if self.interrupt is not None:
            self.interrupt.needs_reset()

    def handle_queue(self, index: int) -> None:
        """Serve queue ``index`` (subclasses)."""

    def drain(self, index: int, handler: ChainHandler, budget: int | None = None,
              gate: Gate | None = None) -> int:
        """Serve queue ``index``: complete up to ``budget`` (default ``DRAIN_BUDGET``) chains
        with ``handler(chain)`` bytes written, then interrupt the driver if it asked
        (§2.7.10); returns chains completed.

        ``gate`` is asked before each chain: a delay stops the batch and serves the queue
        again after it (``STOP``: not on a timer).  When the budget runs out with chains
        still waiting, the queue is served again on a later loop turn, after the loop
        has polled its other fds.  A handler that raises ``GuestError`` completes its
        chain with length 0 (counted) and the batch goes on; bad chains are completed by
        the queue and counted in ``guest_faults``.
        """
        queue = self.queues[index]
        assert queue is not None
        budget = self.DRAIN_BUDGET if budget is None else budget
        served = 0
        bad_before, used_before = queue.bad_chains, queue.completed
        while self.active:
            if served >= budget:
                if (index in self._drain_held or queue.has_available()
                        or queue.set_notification(True)):   # else the driver must kick again
                    self.serve_later(index)
                break
            if gate is not None and (wait := gate()) is not None:
                if wait != STOP:
                    self.serve_later(index, wait)
                break
            chain = self._drain_held.pop(index, None) or queue.pop()
            if chain is None:
                if queue.set_notification(True):
                    continue               # the driver added one meanwhile (§2.7.10)
                break
            written = self._serve_chain(index, chain, handler)
            if written is None:
                self._drain_held[index] = chain
                break
            queue.add_used(chain.head, written)
            served += 1
        bad = queue.bad_chains - bad_before
        if bad:
            self.guest_fault("chain", f"queue {index}: {queue.errors[-1] if queue.errors else ''}",
                             count=bad)
        if queue.completed != used_before and queue.needs_interrupt():
            self.signal_used()
        return served

    def _serve_chain(self, index: int, chain: DescriptorChain,
                     handler: ChainHandler) -> int | None:
        try:
            return handler(chain)
        except QueueProtocolError:
            raise
        except GuestError as exc:
            self.guest_fault("request", f"queue {index}: request at head {chain.head}: {exc}")
            return 0

    def serve_later(self, index: int, delay: float = 0.0) -> None:
        """Serve queue ``index`` again on a later loop turn (``delay`` seconds from now, or
        as soon as the loop has polled its fds); at most one retry per queue is pending,
        however often this is asked, and a reset cancels it."""
        loop = self.loop
        if index in self._drain_retries or loop is None:
            return

        def again() -> None:
            if self._drain_retries.get(index) is token:
                del self._drain_retries[index]
                self.process_queue(index)

        token: object = loop.call_later(delay, again) if delay > 0 else object()
        self._drain_retries[index] = token
        if not isinstance(token, Timer):
            loop.call_soon(again)

    def signal_used(self) -> None:
        """Raise the used-buffer interrupt."""
        if self.interrupt is not None:
            self.interrupt.signal_used()
