"""Kicks served in C: an event loop's wait (``svmm_wait``) that serves the queues a device
lets C take, so that a kick costs no Python.

Without it every kick is a whole Python turn of the device's loop: ``epoll_wait``, the
ioeventfd's handler, ``process_queue``, ``serve``, the C run (``svmm_serve``), the
interrupt decision, the irqfd.  A guest that sends one packet per kick, as Linux's TCP does
on a slow host, pays that turn per packet.  With it, the loop waits in C: a ready ioeventfd
(or a receive queue's host fd, a tap) of a queue C may serve is read and served there with
the device's C handler, the interrupt raised as ``SplitQueue.needs_interrupt`` would
(§2.7.7), and only the other fds, or a queue C gives back, wake Python.

C gives a queue back when Python must decide: a chain the C handler defers or the ring
refuses (the Python path pops it again, counts and logs it, §2.7.5), a device reset, a
receive queue whose host fd must start or stop being watched (a chain kept for host data,
or no buffers left).  Budget: a kick serves at most ``KICK_BUDGET`` chains (the Python
loop's ``SERVE_BUDGET * NATIVE_WEIGHT``); the rest is served after the other ready fds,
the queue being left to the poll (``svmm_serve_queue``'s ``SVMM_STOP_BUDGET``).

A queue's state — its ring position (``svmm_serving``) and interrupt suppression state —
belongs to Python while Python serves and to C while the loop waits: before each wait every
queue goes to C (``push``: with whether its device lets C take it now, ``native_kick``),
after it what C changed comes back (``pull``), and the device folds what its C handler
counted (``after_native``).  Everything here runs on the loop's own thread.

``STRATOVMM_FASTPATH=0`` (no C ring path) makes no ``FastQueue``: every kick is Python's.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.virtio._ring import ffi, lib
from stratovmm.virtio.queue import SplitQueue

if TYPE_CHECKING:
    from stratovmm.virtio.device import VirtioDevice

# chains one kick serves in C before the loop's other ready fds (the Python loop's budget)
KICK_BUDGET = 256
# with C serving and nothing for Python, Python still runs this often (it folds what the C
# handlers counted; stats add what is not folded yet, and the wait ends for Python's timers
# anyway): rarely, since at a few hundred packets a second a Python turn every 10 ms was
# ~40 % of the device's CPU
SLICE_NS = 1_000_000_000
# the longest a queue served to empty is watched before the loop asks for its next kick and
# sleeps (QEMU's iothreads: poll-max-ns 32768; the window adapts between 0 and this)
POLL_MAX_NS = 32_000


def poll_max_ns() -> int:
    """``STRATOVMM_POLL_MAX_NS`` (0: never poll), else ``POLL_MAX_NS``."""
    value = os.environ.get("STRATOVMM_POLL_MAX_NS", "")
    return int(value) if value.isdigit() else POLL_MAX_NS


class FastQueue:
    """One queue C may serve from the loop's wait: its ``struct svmm_queue``."""

    def __init__(self, device: VirtioDevice, index: int, queue: SplitQueue, kick: int,
                 interrupt_status: int, irqfd: int) -> None:
        self.device = device
        self.index = index
        self.queue = queue                 # (its NativeRing owns the guest and serving state)
        self.cell: Any = ffi.new("struct svmm_queue *", {
            "guest": queue.native_guest(), "budget": KICK_BUDGET, "kick_fd": kick,
            "isr": ffi.cast("uint32_t *", interrupt_status), "irqfd": irqfd})

    @classmethod
    def over(cls, device: VirtioDevice, index: int, queue: SplitQueue | None, kick: int,
             interrupt_status: int, irqfd: int | None) -> FastQueue | None:
        """A ``FastQueue`` when C can serve ``queue`` (the C ring path reaches it, the device
        has an irqfd and a ``native_kick`` of its own), else None."""
        from stratovmm.virtio.device import VirtioDevice  # (it imports this module)

        if (queue is None or irqfd is None or not queue.has_c_path
                or type(device).native_kick is VirtioDevice.native_kick):
            return None
        return cls(device, index, queue, kick, interrupt_status, irqfd)

    def push(self) -> None:
        """Hand the queue's state to C, enabled if its device lets C serve it now."""
        cell = self.cell
        device, index, queue = self.device, self.index, self.queue
        with device.lock:      # (what another thread's stop_native_kicks changes, under it)
            handler = (device.native_kick(index)
                       if device.active and not device.held_chains(index) else None)
            serving = (queue.native_serving(handler, device.serving_flag)
                       if handler is not None else None)
            if serving is None:
                cell.enabled = 0
                return
            cell.serving = serving
            cell.signalled_used = queue.signalled_used
            cell.signalled_valid = queue.signalled_valid
            cell.enabled = 1

    def pull(self) -> None:
        """Take back what C changed while the loop waited, if it served."""
        cell = self.cell
        if not cell.ran:
            return
        cell.ran = 0
        serving, queue = cell.serving, self.queue
        queue.last_avail = serving.last_avail
        queue.next_used = serving.next_used
        queue.signalled_used = cell.signalled_used
        queue.signalled_valid = bool(cell.signalled_valid)
        queue.completed += cell.served
        cell.served = 0
        self.device.after_native(self.index)

    def stop(self) -> None:
        """From any thread: no more serving in C until the next ``push`` enables it, and
        none under way when this returns (``svmm_queue_stop``)."""
        lib.svmm_queue_stop(self.cell)


class KickTable:
    """One loop's fds served in C, and the loop's wait (``EventLoop.set_waiter``)."""

    def __init__(self) -> None:
        self._kicks: dict[int, tuple[Any, FastQueue]] = {}     # fd -> (svmm_kick, its queue)
        self._array: Any = ffi.new("struct svmm_kick *[]", 1)
        self._queues: list[FastQueue] = []
        self._retired: list[object] = []   # cells a wait may still point to (other threads)
        self._out = ffi.new("uint32_t[]", 2 * lib.SVMM_WAIT_MAX_EVENTS)
        self.poll: Any = ffi.new("struct svmm_poll *", {"max_ns": poll_max_ns()})
        self._error = ffi.new("int *")

    @classmethod
    def of(cls, loop: EventLoop) -> KickTable:
        """``loop``'s table, made (and made its waiter) on first use."""
        waiter = loop.waiter
        if isinstance(waiter, cls):
            return waiter
        table = cls()
        loop.set_waiter(table)
        return table

    def add(self, fd: int, queue: FastQueue, *, eventfd: bool) -> None:
        """Serve ``queue`` in C when ``fd`` (watched by the loop) is ready: an ioeventfd, read
        first, or a receive queue's host fd (the queue counts as watching it)."""
        kick = ffi.new("struct svmm_kick *", {"fd": fd, "is_eventfd": int(eventfd),
                                              "queue": queue.cell})
        self.discard(fd)
        self._kicks[fd] = (kick, queue)
        if not eventfd:
            queue.cell.watched = 1
        self._rebuild()

    def discard(self, fd: int) -> None:
        """Stop serving ``fd`` in C (the loop no longer watches it); no error if it was not."""
        entry = self._kicks.pop(fd, None)
        if entry is None:
            return
        kick, queue = entry
        if not kick.is_eventfd:
            queue.cell.watched = 0
        self._retired.append(kick)
        self._rebuild()

    def _rebuild(self) -> None:
        kicks = [kick for kick, _queue in self._kicks.values()]
        self._retired.append(self._array)
        self._array = ffi.new("struct svmm_kick *[]", kicks or 1)
        self._queues = list({id(q): q for _kick, q in self._kicks.values()}.values())

    def serves(self, fd: int) -> bool:
        """True while ``fd`` is one C serves."""
        return fd in self._kicks

    def wait(self, epfd: int, timeout: float) -> list[tuple[int, int]]:
        """``epoll.poll(timeout)`` on ``epfd`` for Python: the ready fds C did not serve."""
        self._retired.clear()          # (no wait of this loop is running: we are its thread)
        queues = self._queues
        for queue in queues:
            queue.push()
        ready = lib.svmm_wait(epfd, self._array, len(self._kicks),
                              -1 if timeout < 0 else int(timeout * 1e9), SLICE_NS, self.poll,
                              self._out, self._error)
        for queue in queues:
            queue.pull()
        if ready < 0:
            code = self._error[0]
            raise (InterruptedError if code == errno.EINTR else OSError)(code, os.strerror(code))
        out = self._out
        return [(out[2 * i], out[2 * i + 1]) for i in range(ready)]


def serve_kicks_in_c(loop: EventLoop, device: VirtioDevice,
                     queues: list[SplitQueue | None], eventfds: list[tuple[int, int]],
                     interrupt_status: int, irqfd: int | None) -> dict[int, FastQueue]:
    """Let C serve the kicks of ``device``'s queues on ``loop`` (each ``(index, eventfd)`` of
    ``eventfds``, already watched by the loop); the queues C can take, by index."""
    fast: dict[int, FastQueue] = {}
    for index, efd in eventfds:
        queue = FastQueue.over(device, index, queues[index], efd, interrupt_status, irqfd)
        if queue is not None:
            KickTable.of(loop).add(efd, queue, eventfd=True)
            fast[index] = queue
    return fast


def watch_host_fd(loop: EventLoop, fd: int, handler: Callable[[int], None],
                  queue: FastQueue | None) -> None:
    """Watch ``fd`` for input on ``loop`` (``handler``); with ``queue``, C serves it there."""
    loop.register(fd, EPOLLIN, handler)
    if queue is not None:
        KickTable.of(loop).add(fd, queue, eventfd=False)
