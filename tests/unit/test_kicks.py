"""The loop's wait in C (``stratovmm.virtio.kicks.KickTable``) as an ``epoll.poll`` for
everything it does not serve itself: Python's fds are dispatched, timeouts and signals
behave as with ``epoll.poll``.  (What C serves, that it matches the Python path, and
that an fd the loop stops watching is no longer C's, are in the blk and net plugins'
tests.)"""

from __future__ import annotations

import os
import signal
import threading

from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.virtio.kicks import KickTable


def waiting_loop() -> EventLoop:
    loop = EventLoop("test")
    KickTable.of(loop)
    assert isinstance(loop.waiter, KickTable)
    return loop


def test_fds_c_does_not_serve_are_dispatched_by_python() -> None:
    loop = waiting_loop()
    read, write = os.pipe()
    seen: list[int] = []
    try:
        loop.register(read, EPOLLIN, seen.append)
        loop.run_once(0)
        assert seen == []
        os.write(write, b"x")
        loop.run_once(5)
        assert seen == [EPOLLIN]
        loop.unregister(read)
        loop.run_once(0.01)               # (a timeout with nothing ready: returns)
        assert seen == [EPOLLIN]
    finally:
        loop.close()
        os.close(read)
        os.close(write)


def test_a_signal_handler_on_the_loop_thread_wakes_the_wait_in_c() -> None:
    """As with ``epoll.poll``: the wait ends on EINTR and the handler's callback runs."""
    loop = waiting_loop()
    stopped_by: list[str] = []

    def on_signal(_signum: int, _frame: object) -> None:
        loop.call_soon(lambda: (stopped_by.append("signal"), loop.stop()))

    def watchdog() -> None:
        if not stopped_by:
            stopped_by.append("watchdog")
            loop.stop()

    previous = signal.signal(signal.SIGUSR1, on_signal)
    sender = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    guard = threading.Timer(10, watchdog)
    try:
        sender.start()
        guard.start()
        loop.run()
    finally:
        sender.cancel()
        guard.cancel()
        signal.signal(signal.SIGUSR1, previous)
        loop.close()
    assert stopped_by[0] == "signal", "the queued callback waited for the watchdog"
