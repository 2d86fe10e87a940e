"""VM events (QMP's ``SHUTDOWN``, ``STOP``, ...) fanned out to subscribers.

The machine and plugins ``emit``; the QMP server subscribes and forwards every
event to each connected client.  Emission is thread-safe; subscribers are
called on the emitting thread and must not block (the QMP server hands the
event to its loop).

An event the guest can trigger at will (the balloon's ``actual``) goes through
an ``EventThrottle``: at most one per second with the latest data, as QEMU's
``monitor_qapi_event_throttle`` does, so a guest cannot flood the log, the
main loop or a QMP client that reads slowly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import field
from typing import Any, Protocol

from stratovmm.records import record

log = logging.getLogger(__name__)


@record(frozen=True)
class Event:
    """One event with its wall-clock timestamp (QMP: seconds + microseconds)."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def to_qmp(self) -> dict[str, Any]:
        """The QMP wire form.  ``data`` is always there, ``{}`` when the event carries
        nothing (``STOP``, ``RESUME``), as StratoVirt v0.3 serialises every event."""
        seconds = int(self.timestamp)
        micro = int((self.timestamp - seconds) * 1_000_000)
        return {"event": self.name, "data": self.data,
                "timestamp": {"seconds": seconds, "microseconds": micro}}


class EventBus:
    """Subscribers receive every emitted ``Event``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` for every later event."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[Event], None]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def emit(self, name: str, data: dict[str, Any] | None = None,
             level: int = logging.INFO) -> Event:
        """Send an event to every subscriber (logged at ``level``)."""
        event = Event(name, data or {})
        with self._lock:
            subscribers = list(self._subscribers)
        log.log(level, "event %s %s", name, event.data)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed for %s", name)
        return event


class ThrottleLoop(Protocol):
    """What a throttle needs of the loop it runs on (``EventLoop`` has it)."""

    def call_soon(self, callback: Callable[[], None]) -> None: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...


class EventThrottle:
    """Event ``name``, sent through ``emit(name, data)`` at most once per ``interval``
    seconds, with the latest data (QEMU's ``monitor_qapi_event_throttle``, one second per
    event type): the first event after a quiet interval leaves on the loop's next turn;
    later ones only replace what is held, which leaves when the interval ends and starts
    the next one.  ``emit`` is safe from any thread (a vCPU) and queues at most one loop
    callback however often it is called; sending happens on ``loop``."""

    def __init__(self, name: str, emit: Callable[[str, dict[str, Any]], object],
                 loop: ThrottleLoop, interval: float = 1.0) -> None:
        self.name = name
        self._send = emit
        self._loop = loop
        self._interval = interval
        self._lock = threading.Lock()
        self._held: dict[str, Any] | None = None
        self._busy = False          # a loop callback or the interval's timer will look

    def emit(self, data: dict[str, Any]) -> None:
        """Send ``data`` now, or with the interval's end if an event left recently."""
        with self._lock:
            self._held = dict(data)
            if self._busy:
                return
            self._busy = True
        self._loop.call_soon(self._release)

    def _release(self) -> None:
        """On the loop: send what is held and open an interval; when one ends with
        nothing held, the throttle is idle again."""
        with self._lock:
            data, self._held = self._held, None
            self._busy = data is not None
        if data is not None:
            self._loop.call_later(self._interval, self._release)
            self._send(self.name, data)

    def flush(self) -> None:
        """On the loop, as the VM ends: send what is held now rather than drop it with the
        process, so a client sees the device's last state before ``SHUTDOWN`` (QEMU drops
        it; nothing is gained by that).  A pending interval then finds nothing held."""
        with self._lock:
            data, self._held = self._held, None
        if data is not None:
            self._send(self.name, data)
