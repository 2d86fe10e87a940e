"""The loop's wait in C (``stratovmm.virtio.kicks.KickTable``) as an ``epoll.poll`` for
everything it does not serve itself: Python's fds are dispatched and timeouts behave as
with ``epoll.poll`` (signals: tests/unit/test_eventloop.py).  What C serves, that it
matches the Python path, and that an fd the loop stops watching is no longer C's, are in
the blk and net plugins' tests."""

from __future__ import annotations

import os

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
