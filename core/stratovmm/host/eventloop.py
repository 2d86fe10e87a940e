"""The epoll event loop and named I/O threads.

The main thread runs one ``EventLoop`` (QMP, signals, stdin, devices without
an iothread); each ``-iothread id=NAME`` is an ``IoThread``: the same loop on its
own thread.  Handlers never block.  ``call_soon`` is the only thread-safe entry
point: it queues a callable and wakes the loop through an eventfd, so other
threads (vCPUs, QMP) hand work to the loop that owns a device instead of
touching its state.  A loop may wait through a ``Waiter`` instead of ``epoll.poll``:
``stratovmm.virtio.kicks`` waits in C and serves some devices' kicks there.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

Handler = Callable[[int], None]


class Waiter(Protocol):
    """What waits for a loop's fds instead of ``epoll.poll`` (``set_waiter``): it may serve
    some fds itself and returns the others' (fd, events), as ``epoll.poll`` would."""

    def wait(self, epfd: int, timeout: float) -> list[tuple[int, int]]: ...
    def discard(self, fd: int) -> None: ...


class Timer:
    """A ``call_later`` callback; ``cancel()`` stops it from running.  Timers order by
    (deadline, seq) in the loop's heap: the same deadline runs in the order asked.  (A
    plain class: a dataclass would exec its generated methods at every start.)"""

    __slots__ = ("callback", "cancelled", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def __repr__(self) -> str:
        return f"Timer(deadline={self.deadline!r}, seq={self.seq!r}, callback={self.callback!r})"

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class EventLoop:
    """``register(fd, events, handler)`` over epoll, with a wake-up eventfd."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, EPOLLIN)
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._running = False
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self.thread_id: int | None = None
        self.turns = 0       # run_once calls so far: devices count their work per turn
        self._dispatching = False   # after this turn's poll returned, on the loop's thread
        self.waiter: Waiter | None = None

    def register(self, fd: int, events: int, handler: Handler) -> None:
        """Call ``handler(events)`` whenever ``fd`` is ready for ``events``."""
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        """Change the events ``fd`` is watched for."""
        self._epoll.modify(fd, events)

    def set_waiter(self, waiter: Waiter) -> None:
        """Wait through ``waiter`` from now on (``stratovmm.virtio.kicks``: kicks served in C)."""
        self.waiter = waiter

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (no error if it was not watched)."""
        if self.waiter is not None:
            self.waiter.discard(fd)
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on this loop's thread (safe from any thread)."""
        self._pending.append(callback)
        if self._dispatching and self.thread_id == threading.get_ident():
            return               # from this turn's callbacks: the next poll does not wait
        # (any other thread, or a signal handler, which runs on this thread inside poll:
        # CPython retries the interrupted poll with its timeout unless woken)
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` seconds (call from the loop's own thread)."""
        timer = Timer(time.monotonic() + delay, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def pending_timers(self) -> list[Timer]:
        """The armed timers not cancelled, soonest first (what a test or a stats reader
        may inspect; the loop's own heap stays private)."""
        return sorted(t for t in self._timers if not t.cancelled)

    def pending_calls(self) -> int:
        """How many ``call_soon`` callbacks wait for the next turn."""
        return len(self._pending)

    def watching(self, fd: int) -> bool:
        """True while ``fd`` is registered."""
        return fd in self._handlers

    def ready(self) -> dict[int, int]:
        """The registered fds epoll reports ready now, with their events, without
        dispatching anything (level-triggered: a later turn sees them again)."""
        return {fd: events for fd, events in self._epoll.poll(0) if fd in self._handlers}

    def in_loop_thread(self) -> bool:
        """True when called from the thread running this loop."""
        return self.thread_id == threading.get_ident()

    def stop(self) -> None:
        """Make ``run`` return after the current iteration (safe from any thread)."""
        self._running = False
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def run(self) -> None:
        """Dispatch events until ``stop``."""
        self.thread_id = threading.get_ident()
        self._running = True
        while self._running:
            self.run_once(-1)

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (-1: forever) and dispatch what is ready."""
        self.turns += 1
        if self._timers:
            wait = max(0.0, self._timers[0].deadline - time.monotonic())
            timeout = wait if timeout < 0 else min(timeout, wait)
        self._dispatching = False    # (first: a callback queued from here on wakes poll)
        if self._pending:
            timeout = 0          # callbacks queued from this thread wait for no fd
        try:
            waiter = self.waiter
            ready = (self._epoll.poll(timeout) if waiter is None
                     else waiter.wait(self._epoll.fileno(), timeout))
        except InterruptedError:
            ready = []
        self._dispatching = True
        for fd, events in ready:
            if fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
                continue
            handler = self._handlers.get(fd)
            if handler is not None:
                self._dispatch(handler, events)
        # only what was queued before this turn: a callback that queues itself again
        # runs next turn, after the fds of other devices had their chance
        for _ in range(len(self._pending)):
            self._dispatch_call(self._pending.popleft())
        if self._timers:
            self._run_timers()

    def _run_timers(self) -> None:
        """The callbacks of the timers due."""
        now = time.monotonic()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._dispatch_call(timer.callback)

    def _dispatch(self, handler: Handler, events: int) -> None:
        try:
            handler(events)
        except Exception:
            log.exception("event handler %r on loop %s failed", handler, self.name)

    def _dispatch_call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("callback %r on loop %s failed", callback, self.name)

    def close(self) -> None:
        """Release the epoll and eventfd."""
        self._epoll.close()
        os.close(self._wake)


class IoThread(EventLoop):
    """A named event loop on its own (daemon) thread: ``-iothread id=NAME``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._thread = threading.Thread(target=self._main, name=f"iothread-{name}", daemon=True)

    def start(self) -> None:
        """Start serving events on the thread."""
        self._thread.start()

    def _main(self) -> None:
        from stratovmm.host.threadname import set_native_name

        set_native_name(f"io-{self.name}")
        self.run()

    def join(self, timeout: float | None = None) -> None:
        """Stop the loop and wait for the thread."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def native_id(self) -> int | None:
        """The thread's kernel tid (for per-thread CPU accounting)."""
        return self._thread.native_id
