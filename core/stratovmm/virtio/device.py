"""``VirtioDevice``: what a virtio device plugin subclasses.

A subclass sets ``DEVICE_TYPE`` (§5 device id) and ``QUEUE_SIZES`` (the maximum
size of each queue), offers its feature bits in ``device_features()``, exposes
its configuration space in ``config_space()``, and handles a kicked queue in
``handle_queue(index)`` by giving ``serve`` its per-request handler.
Everything else — feature negotiation, queue setup, ioeventfd/irqfd, reset — is
the transport's job.

``serve`` is the one serving loop, for every queue of every device.  Per item (a
request, a packet, a received frame) it admits the item — a budget of items per
loop turn (the rest waits for a later turn, so one guest cannot starve QMP or
the other devices of its loop), rate limiters, an optional gate — takes the
chains the item needs, calls the device's handler, and completes the chains;
after the batch it publishes the used chains with one ``used->idx`` store, counts
the bad chains and interrupts the driver once, if it asked (§2.7.7).  When the
ring runs dry it re-enables the driver's notifications and looks again
(§2.7.10).  A receive path whose host side has nothing yet keeps its chains:
``serve`` holds them and offers them first when the device serves the queue
again, on host data.  A handler that raises ``GuestError`` completes
its chain with length 0 instead of losing it.

Two calls carry the per-chain work and are the seams for a faster
implementation under this loop (``stratovmm.virtio.native``, in C):
``SplitQueue.pop`` walks and checks one chain (§2.7.5),
``SplitQueue.add_used_batch`` writes the batch's used elements and publishes
``used->idx`` once (§2.7.8).  A device with a C handler for its requests (blk's
reads and writes, net's frames) gives it to ``serve`` too: runs of chains then go
through ``SplitQueue.serve_native``, pop, handler and used ring in one C call, and
come back to this loop for anything the C handler leaves to Python.  Nothing else
here touches the rings, except the notification re-enable and the interrupt
decision.  Such a device may also let its kicks skip this loop (``native_kick``):
the device's event loop then serves them in C (``stratovmm.virtio.kicks``).

Threading: ``activate``, ``handle_queue`` and ``reset`` run on the device's own
loop (the main loop or its ``iothread``); ``read_config``/``write_config`` and
``quiesce`` run on vCPU threads, so mutable config state needs ``self.lock``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from stratovmm.devices.counters import DeviceCounters
from stratovmm.errors import GuestError
from stratovmm.host.eventloop import EventLoop, Timer
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio.chain import IOV_MAX, DescriptorChain
from stratovmm.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1
from stratovmm.virtio.kicks import FastQueue, watch_host_fd
from stratovmm.virtio.native import STOP_EMPTY, STOP_INACTIVE, STOP_KEEP, ActiveFlag, NativeHandler
from stratovmm.virtio.queue import QueueProtocolError, SplitQueue

BASE_FEATURES = (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
SERVE_BUDGET = 64       # items one queue may complete per loop turn
# items a device's C handler serves for one item of that budget: a C item costs a fifth to
# a twentieth of a Python one (pumps: 2.2 vs 15.8 us per 4 KiB read, 0.5 vs 9.4 per
# transmitted frame), and the Python around each C call (the loop turn, serve) is paid
# once per call, so a C call should serve more than a Python turn does
NATIVE_WEIGHT = 4
# a C run that ends serving: a chain kept for host data, a reset (an empty ring: _run_native)
_C_FINISHED = frozenset((STOP_KEEP, STOP_INACTIVE))
STOP = math.inf         # a gate's answer: stop now; whoever unblocks the queue serves it again


class HeldChains:
    """The chains ``serve`` took from one queue for items not yet done, oldest first: receive
    buffers waiting for host data.  ``room`` (writable bytes) and ``descriptors`` (buffers)
    are kept as chains come and go, so a frame handler sizes its ``readv`` without a walk."""

    def __init__(self) -> None:
        self._chains: collections.deque[DescriptorChain] = collections.deque()
        self._views: collections.deque[list[memoryview] | None] = collections.deque()
        self.room = 0
        self.descriptors = 0

    def __len__(self) -> int:
        return len(self._chains)

    def __iter__(self) -> Iterator[DescriptorChain]:
        return iter(self._chains)

    def __getitem__(self, position: int) -> DescriptorChain:
        return self._chains[position]

    def after(self, count: int) -> list[DescriptorChain]:
        """The held chains past the first ``count``."""
        return list(itertools.islice(self._chains, count, None))

    def write_views(self, memory: GuestMemoryProtocol, count: int) -> list[memoryview]:
        """The writable buffers of the first ``count`` held chains as one iovec list; each
        chain's views are made once, the first time they are asked for (a chain held for
        many frames is not sliced again for each)."""
        out: list[memoryview] = []
        for position in range(count):
            views = self._views[position]
            if views is None:
                views = self._views[position] = self._chains[position].write_views(memory)
            out += views
        return out

    def append(self, chain: DescriptorChain) -> None:
        """Hold ``chain`` behind the others."""
        self._chains.append(chain)
        self._views.append(None)
        self.room += chain.writable_len
        self.descriptors += _descriptors(chain)

    def take(self, count: int) -> list[DescriptorChain]:
        """Remove and return the first ``count`` chains (the ones an item used)."""
        taken = [self._chains.popleft() for _ in range(count)]
        for chain in taken:
            self._views.popleft()
            self.room -= chain.writable_len
            self.descriptors -= _descriptors(chain)
        return taken


def _descriptors(chain: DescriptorChain) -> int:
    return len(chain.readable) + len(chain.writable)


# ``serve``'s handler for one chain: the bytes written into it, or None to keep it (a receive
# buffer with nothing to carry yet): ``serve`` holds it and offers it first next time.
ChainHandler = Callable[[DescriptorChain], "int | None"]
# a ``Frames`` handler: the bytes written into each of the first held chains (used in order),
# or None to keep them all.
FrameHandler = Callable[[HeldChains], "Sequence[int] | None"]
# ``serve``'s gate, asked before each item: None to go on, or seconds until the queue is
# worth serving again (``STOP``: do not retry on a timer).
Gate = Callable[[], "float | None"]


@dataclass(frozen=True)
class Frames:
    """``serve``'s form for items that span several chains: virtio-net's receive frames, which
    fill as many buffers as they need with VIRTIO_NET_F_MRG_RXBUF (§5.1.6.4).

    Before each item ``serve`` takes chains while ``wants(held)`` says so and the ring has
    them: ``check(chain)`` names why the device cannot use a chain (it is completed with
    length 0 and counted), and the held buffers stay below ``IOV_MAX`` (one is left for a
    host buffer), so one ``readv`` takes them all.  Then ``handler(held)`` says what the
    item wrote into the first held chains, or None (nothing to carry yet) to keep them.
    An empty answer is an item that used no chain (a dropped frame).
    """

    handler: FrameHandler
    wants: Callable[[HeldChains], bool]
    check: Callable[[DescriptorChain], str | None] | None = None


class RateLimiter(Protocol):
    """What ``serve`` asks of a rate limiter (``stratovmm.devices.ratelimit.TokenBucket``)."""

    def available(self) -> int: ...
    def take(self, wanted: int) -> int: ...
    def delay_for(self, wanted: int) -> float: ...


class Interrupt(Protocol):
    """How a device reaches its driver (implemented by the transport)."""

    def signal_used(self) -> None: ...
    def signal_config(self) -> None: ...
    def needs_reset(self) -> None: ...


class VirtioDevice(DeviceCounters):
    """Base class of every virtio device model."""

    DEVICE_TYPE = 0
    QUEUE_SIZES: tuple[int, ...] = ()
    SERVE_BUDGET = SERVE_BUDGET       # items per queue per loop turn, unless serve is told

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.lock = threading.Lock()
        self.acked_features = 0
        self.memory: GuestMemoryProtocol | None = None
        self.queues: list[SplitQueue | None] = []
        self.interrupt: Interrupt | None = None
        self.loop: EventLoop | None = None
        self._active = ActiveFlag()
        # (prefixed, so that a subclass's own attributes cannot clash with them)
        self._serve_held: dict[int, HeldChains] = {}    # queue -> chains taken, not yet used
        self._serve_retries: dict[int, object] = {}     # queue -> its one pending retry
        self._serve_spent: dict[int, tuple[int, int]] = {}  # queue -> (loop turn, budget spent)
        self.fast_queues: dict[int, FastQueue] = {}    # queues whose kicks C may serve
        self.init_counters()

    @property
    def active(self) -> bool:
        """Serving the queues: set at DRIVER_OK, cleared by a reset or a broken ring.  Kept
        where a device's C handler loop reads it too (``NativeRing.serve``), since a vCPU
        thread clears it while the device's loop serves."""
        return bool(self._active.cell[0])

    @active.setter
    def active(self, value: bool) -> None:
        self._active.cell[0] = 1 if value else 0

    @property
    def serving_flag(self) -> ActiveFlag:
        """``active`` where C reads it (``svmm_serve`` stops at a reset)."""
        return self._active

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
        with self.lock:
            self.stop_native_kicks()      # (and no C run of the old rings is still going)

    def reset(self) -> None:
        """The driver reset the device: forget every queue, held chain and pending retry."""
        self.active = False
        for token in self._serve_retries.values():
            if isinstance(token, Timer):
                token.cancel()
        self._serve_retries.clear()
        self._serve_held.clear()
        self._serve_spent.clear()
        self.fast_queues = {}
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
            self.log_once("internal", logging.ERROR, "%s: serving queue %d failed; the device"
                          " needs a reset (logged once; counted in internal_errors)", self.id,
                          index, exc_info=True)
            self._stop()

    def _stop(self) -> None:
        """Serve nothing more until the driver resets the device (§2.1.2)."""
        self.active = False
        if self.interrupt is not None:
            self.interrupt.needs_reset()

    def handle_queue(self, index: int) -> None:
        """Serve queue ``index`` (subclasses: through ``serve``)."""

    def serve(self, index: int, handler: ChainHandler | Frames, *, budget: int | None = None,
              ops_limit: RateLimiter | None = None, byte_limit: RateLimiter | None = None,
              gate: Gate | None = None, native: NativeHandler | None = None) -> int:
        """Serve queue ``index``: up to ``budget`` items (default ``SERVE_BUDGET``), each one
        chain given to ``handler(chain)`` — or several, with ``Frames`` — and completed with
        the bytes the handler wrote, all published together after the batch (§2.7.8.2);
        then one interrupt, if the driver asked (§2.7.7).
        Returns the items served.

        Before each item: the budget, shared by every call in one loop turn (spent: the
        queue is served again on a later turn, after the loop has polled its fds), the
        rate limiters (empty: again on a timer) and ``gate`` (a delay: again after it;
        ``STOP``: not on a timer).  ``ops_limit`` takes one token per item (blk's iops);
        ``byte_limit`` one per byte written to the guest, and a chain is offered to the
        handler trimmed to the tokens at hand (rng's bytes_per_sec).  A handler that
        returns None keeps its chain: it is held (``held_chains``) and offered first when
        the device serves the queue again, e.g. when host data arrives.  A handler that
        raises ``GuestError`` completes its chain with length 0 (counted) and the batch
        goes on; bad chains are completed by the queue and counted in ``guest_faults``.

        ``native``: the device's C handler for the same items (one chain each; not with
        ``byte_limit`` or ``gate``).  While no chain is held, the chains go to it in one C
        call per run of them (``SplitQueue.serve_native``), under the same budget (where
        ``NATIVE_WEIGHT`` of them spend one item of it) and ``ops_limit``; what it gives
        back — a chain it leaves to Python, a refused chain, a broken ring — the Python
        loop below takes, one item, before C goes on.  When it keeps a chain for host
        data, serving stops and the chain stays in the ring.
        """
        queue = self.queues[index]
        assert queue is not None
        if native is not None and not queue.has_c_path:
            native = None        # (STRATOVMM_FASTPATH=0: the batch stays one used->idx store)
        turn = self.loop.turns if self.loop is not None else 0
        spent_turn, spent = self._serve_spent.get(index, (turn, 0))
        served = spent if spent_turn == turn else 0     # the budget spent by every call this turn
        limit = self.SERVE_BUDGET if budget is None else budget
        used_before = queue.completed
        items = 0
        if (native is not None and served < limit and ops_limit is None and byte_limit is None
                and gate is None and not self._serve_held.get(index)):
            # the common case, C calls and nothing else; the loop below takes what they
            # leave (the budget spent, a chain for the Python handler)
            items, finished = self._run_native(queue, native, (limit - served) * NATIVE_WEIGHT,
                                               isinstance(handler, Frames))
            served += -(-items // NATIVE_WEIGHT)
            if finished:
                self._serve_spent[index] = (turn, served)
                if items and queue.needs_interrupt():
                    self.signal_used()
                return items
        held = self._serve_held.get(index)
        if held is None:
            held = self._serve_held[index] = HeldChains()
        bad_before = queue.bad_chains
        done: list[tuple[int, int]] = []        # (head, length) of the chains items used
        try:
            served, more = self._serve_items(index, queue, held, handler, native, served, limit,
                                             done, (ops_limit, byte_limit, gate))
            items += more
        finally:
            # the batch's used elements, then used->idx once (§2.7.8.2): one store per
            # batch, also when the ring broke in the middle of it (those items were done)
            queue.add_used_batch(done)
            bad = queue.bad_chains - bad_before    # (counted also when the ring broke later)
            if bad:
                self.guest_fault("chain", f"queue {index}: "
                                 f"{queue.errors[-1] if queue.errors else ''}", count=bad)
        self._serve_spent[index] = (turn, served)
        if queue.completed != used_before and queue.needs_interrupt():
            self.signal_used()
        return items

    def _serve_items(self, index: int, queue: SplitQueue, held: HeldChains,
                     handler: ChainHandler | Frames, native: NativeHandler | None,
                     served: int, budget: int, done: list[tuple[int, int]],
                     limits: tuple[RateLimiter | None, RateLimiter | None, Gate | None],
                     ) -> tuple[int, int]:
        """``serve``'s loop: items until the budget, a limit, an empty ring or a kept chain;
        their completions go to ``done``.  Returns (the budget spent this turn, items)."""
        ops_limit, byte_limit, gate = limits
        frames = handler if isinstance(handler, Frames) else None
        items = 0
        while self.active:
            if served >= budget:
                if (held or queue.has_available()
                        or queue.set_notification(True)):   # else the driver must kick again
                    self.serve_later(index)
                break
            wait = _admission(ops_limit, byte_limit, gate)
            if wait is not None:
                if wait != STOP:
                    self.serve_later(index, wait)
                break
            if native is not None and not held:
                if done:
                    queue.add_used_batch(done)   # in ring order, before what C uses
                    done.clear()
                left = (budget - served) * NATIVE_WEIGHT
                got, finished = self._run_native(
                    queue, native, left if ops_limit is None else min(left, ops_limit.available()),
                    frames is not None)
                served += -(-got // NATIVE_WEIGHT)
                items += got
                if ops_limit is not None and got:
                    ops_limit.take(got)
                if finished:
                    break
                if got:
                    continue             # the budget, the limiter, then C again
            if not self._take_chains(index, queue, held, frames, done):
                break
            lengths = self._serve_item(index, held, handler, byte_limit)
            if lengths is None:
                break
            used = held.take(len(lengths))
            done += zip([chain.head for chain in used], lengths, strict=True)
            if ops_limit is not None:
                ops_limit.take(1)
            if byte_limit is not None:
                byte_limit.take(sum(lengths))
            served += 1
            items += 1
        return served, items

    def _run_native(self, queue: SplitQueue, native: NativeHandler, left: int,
                    receive: bool) -> tuple[int, bool]:
        """Up to ``left`` chains through the C handler; returns (chains served, finished:
        the ring is empty and the driver was asked to kick, a chain is kept for host data,
        or the driver reset the device — else the budget is spent or Python takes the next
        chain).  Receive queues (``receive``: buffers the device waits to fill) ask for
        the kick in C as soon as the ring is empty: a device without buffers holds host
        data back.  Request queues ask from here, after the C call returns: a driver
        still adding requests meanwhile is served without a kick (§2.7.10)."""
        got = 0
        while True:
            served, stop = queue.serve_native(native, self._active, left - got, receive)
            got += served
            if stop != STOP_EMPTY:
                return got, stop in _C_FINISHED
            if receive or not queue.set_notification(True):
                return got, True
            if got >= left:
                return got, False

    def _take_chains(self, index: int, queue: SplitQueue, held: HeldChains,
                     frames: Frames | None, done: list[tuple[int, int]]) -> bool:
        """Hold the chains the next item needs: one, or as many as ``frames.wants``, each
        walked and checked whole by ``queue.pop`` (§2.7.5); the chains refused on the way
        join ``done``, the batch's completions.  False when none is held and the ring is
        empty, after asking the driver to notify us of its next buffer (§2.7.10)."""
        while frames.wants(held) if frames is not None else not held:
            chain = queue.pop(done)        # a bad chain joins the batch, in ring order
            if chain is None:
                if queue.set_notification(True):
                    continue               # the driver added one meanwhile (§2.7.10)
                break
            if frames is not None:
                fault = frames.check(chain) if frames.check is not None else None
                if fault is not None:
                    self.guest_fault("unusable-chain", f"queue {index}: {fault}")
                    done.append((chain.head, 0))
                    continue
                if held and held.descriptors + _descriptors(chain) >= IOV_MAX:
                    queue.unpop()          # for a later item: one readv could not take it
                    break
            held.append(chain)
        return bool(held)

    def _serve_item(self, index: int, held: HeldChains, handler: ChainHandler | Frames,
                    byte_limit: RateLimiter | None) -> Sequence[int] | None:
        """The handler's lengths for the first held chains, or None to keep them."""
        try:
            if isinstance(handler, Frames):
                return handler.handler(held)
            chain = held[0]
            if byte_limit is not None:
                chain = chain.trim_writable(byte_limit.available())
            written = handler(chain)
            return None if written is None else (written,)
        except QueueProtocolError:
            raise
        except GuestError as exc:
            self.guest_fault("request", f"queue {index}: request at head {held[0].head}: {exc}")
            return (0,)

    def native_kick(self, index: int) -> NativeHandler | None:
        """The C handler that may serve queue ``index``'s kicks right now with no Python at all
        (``stratovmm.virtio.kicks``: in the loop's wait, as ``serve(native=...)`` would with
        nothing held, no limiter and no gate), or None: Python serves them.  Asked before
        each wait of the device's loop, so the answer may follow the device's state."""
        return None

    def stop_native_kicks(self) -> None:
        """From any thread, under ``self.lock``: C serves none of this device's kicks until
        the loop's next wait asks ``native_kick`` again, and none is under way when this
        returns — call it before closing what a C handler uses."""
        for queue in self.fast_queues.values():
            queue.stop()

    def after_native(self, index: int) -> None:
        """Hook: C served queue ``index`` in the loop's wait: fold what the C handler counted
        into ``counters``, under ``self.lock`` (``unfolded_counts`` says what is not folded
        yet, for ``stats`` read meanwhile from another thread)."""

    def watch_host_fd(self, index: int, fd: int, handler: Callable[[int], None]) -> None:
        """Watch ``fd`` (the host side of receive queue ``index``, e.g. a tap) for input:
        ``handler`` runs when it is readable, or C serves the queue itself while C serves
        its kicks.  ``self.loop.unregister(fd)`` stops both."""
        assert self.loop is not None
        watch_host_fd(self.loop, fd, handler, self.fast_queues.get(index))

    def held_chains(self, index: int) -> int:
        """Chains of queue ``index`` taken and not yet used (receive buffers kept for host
        data): every chain the device took is used, held, or the device needs a reset."""
        held = self._serve_held.get(index)
        return len(held) if held is not None else 0

    def serve_later(self, index: int, delay: float = 0.0) -> None:
        """Serve queue ``index`` again on a later loop turn (``delay`` seconds from now, or
        as soon as the loop has polled its fds again); at most one retry per queue is
        pending, however often this is asked, and a reset cancels it."""
        loop = self.loop
        if index in self._serve_retries or loop is None:
            return
        turn = loop.turns

        def again() -> None:
            if self._serve_retries.get(index) is not token:
                return
            if loop.turns == turn:
                loop.call_soon(again)     # asked while this turn's fds ran: after the next poll
                return
            del self._serve_retries[index]
            self.process_queue(index)

        token: object = loop.call_later(delay, again) if delay > 0 else object()
        self._serve_retries[index] = token
        if not isinstance(token, Timer):
            loop.call_soon(again)

    def signal_used(self) -> None:
        """Raise the used-buffer interrupt."""
        if self.interrupt is not None:
            self.interrupt.signal_used()


def _admission(ops_limit: RateLimiter | None, byte_limit: RateLimiter | None,
               gate: Gate | None) -> float | None:
    """None when the next item may go; else seconds until it is worth asking again."""
    for limiter in (ops_limit, byte_limit):
        if limiter is not None and limiter.available() < 1:
            return max(limiter.delay_for(1), 0.001)
    return gate() if gate is not None else None
