"""``EventLoop``'s own scheduling: callbacks queued from the loop's thread run on the next
turn without a wake-up write, and those queued from other threads wake a waiting loop."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from stratovmm.host.eventloop import EventLoop
from stratovmm.virtio.kicks import KickTable


def run_in_thread(loop: EventLoop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def test_a_callback_queued_on_the_loop_thread_runs_without_a_wake_up() -> None:
    """The second callback is queued from the first, on the loop's thread: no eventfd write
    (the loop's wake-up fd stays empty), and the next turn's poll does not wait for one."""
    loop = EventLoop("test")
    ran: list[str] = []
    wake_pending: list[bool] = []

    def second() -> None:
        ran.append("second")
        loop.stop()

    def first() -> None:
        loop.call_soon(second)
        try:
            os.eventfd_read(loop._wake)
            wake_pending.append(True)
        except BlockingIOError:
            wake_pending.append(False)
        ran.append("first")

    loop.call_soon(first)
    thread = run_in_thread(loop)
    thread.join(10)
    try:
        assert not thread.is_alive(), "the loop waited in poll with a callback queued"
        assert ran == ["first", "second"]
        assert wake_pending == [False]
    finally:
        loop.stop()
        thread.join(5)
        loop.close()


def test_a_callback_queued_from_another_thread_wakes_the_loop() -> None:
    """While the loop waits in poll with nothing to do, another thread's callback wakes it."""
    loop = EventLoop("test")
    done = threading.Event()
    thread = run_in_thread(loop)
    try:
        loop.call_soon(done.set)
        assert done.wait(10)
    finally:
        loop.stop()
        thread.join(5)
        loop.close()


@pytest.mark.parametrize("wait_in_c", [False, True])
def test_a_signal_handler_on_the_loop_thread_wakes_the_waiting_poll(wait_in_c: bool) -> None:
    """A Python signal handler runs on the main thread inside the loop's poll, which
    CPython then retries with its timeout: a callback it queues must wake the poll (the
    VMM's SIGTERM handler queues the shutdown this way).  The same when the loop waits in
    C (``KickTable``: the wait ends on EINTR)."""
    loop = EventLoop("test")
    if wait_in_c:
        KickTable.of(loop)
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
