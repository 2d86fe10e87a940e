"""``EventThrottle``: a guest-triggered event leaves at most once per interval with the
latest data, as QEMU's ``monitor_qapi_event_throttle`` does, and costs one loop callback
however often the guest triggers it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from stratovmm.host.eventloop import Timer
from stratovmm.qmp.events import EventThrottle


class SteppedLoop:
    """A loop stepped by the test: ``call_soon``/``call_later`` are recorded and run on
    ``turn()``; time is ``now``, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.soon: list[Callable[[], None]] = []
        self.timers: list[Timer] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, len(self.timers), callback)
        self.timers.append(timer)
        return timer

    def turn(self) -> None:
        """Run what was queued, then every timer that is due."""
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()
        due = [t for t in self.timers if t.deadline <= self.now and not t.cancelled]
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()


def make() -> tuple[EventThrottle, SteppedLoop, list[tuple[str, dict[str, Any]]]]:
    loop = SteppedLoop()
    sent: list[tuple[str, dict[str, Any]]] = []
    throttle = EventThrottle("CHANGED", lambda name, data: sent.append((name, data)), loop,
                             interval=1.0)
    return throttle, loop, sent


def test_first_event_leaves_at_once() -> None:
    """An event after a quiet period is sent on the loop's next turn."""
    throttle, loop, sent = make()
    throttle.emit({"v": 1})
    assert sent == []
    loop.turn()
    assert sent == [("CHANGED", {"v": 1})]


def test_burst_is_coalesced_to_the_latest_and_sent_when_the_interval_ends() -> None:
    """Within the interval only the newest data is kept; it leaves when the interval ends,
    and that starts a new interval."""
    throttle, loop, sent = make()
    throttle.emit({"v": 0})
    loop.turn()
    for v in range(1, 1001):
        throttle.emit({"v": v})
    loop.turn()
    assert sent == [("CHANGED", {"v": 0})]
    loop.now += 0.5
    loop.turn()
    assert len(sent) == 1
    loop.now += 0.5
    loop.turn()
    assert sent[-1] == ("CHANGED", {"v": 1000}) and len(sent) == 2
    throttle.emit({"v": 1001})
    loop.turn()
    assert len(sent) == 2, "the event right after a flush waits for the next interval"
    loop.now += 1.0
    loop.turn()
    assert sent[-1] == ("CHANGED", {"v": 1001}) and len(sent) == 3


def test_quiet_interval_ends_the_throttling() -> None:
    """When nothing was held back, the timer ends quietly and the next event goes at once."""
    throttle, loop, sent = make()
    throttle.emit({"v": 1})
    loop.turn()
    loop.now += 5
    loop.turn()
    throttle.emit({"v": 2})
    loop.turn()
    assert sent == [("CHANGED", {"v": 1}), ("CHANGED", {"v": 2})]


def test_storm_from_other_threads_queues_one_callback() -> None:
    """Thousands of emits from several threads (vCPUs) queue one loop callback at most."""
    throttle, loop, sent = make()

    def storm(base: int) -> None:
        for v in range(2000):
            throttle.emit({"v": base + v})

    threads = [threading.Thread(target=storm, args=(n * 10_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loop.soon) == 1
    loop.turn()
    assert len(sent) == 1


def test_flush_sends_what_is_held_once() -> None:
    """As the VM ends, the value held back by the interval is sent at once, and only once:
    the interval's end then finds nothing; with nothing held, flush sends nothing."""
    throttle, loop, sent = make()
    throttle.emit({"v": 1})
    loop.turn()
    throttle.emit({"v": 2})
    throttle.emit({"v": 3})
    throttle.flush()
    assert sent == [("CHANGED", {"v": 1}), ("CHANGED", {"v": 3})]
    throttle.flush()
    loop.now += 1.0
    loop.turn()
    assert len(sent) == 2
    throttle.emit({"v": 4})
    loop.turn()
    assert sent[-1] == ("CHANGED", {"v": 4}), "after a quiet interval the throttle is idle"
