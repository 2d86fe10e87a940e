"""VM events (QMP's ``SHUTDOWN``, ``STOP``, ...) fanned out to subscribers.

The machine and plugins ``emit``; the QMP server subscribes and forwards every
event to each connected client.  Emission is thread-safe; subscribers are
called on the emitting thread and must not block (the QMP server hands the
event to its loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
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

    def emit(self, name: str, data: dict[str, Any] | None = None) -> Event:
        """Send an event to every subscriber."""
        event = Event(name, data or {})
        with self._lock:
            subscribers = list(self._subscribers)
        log.info("event %s %s", name, event.data)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed for %s", name)
        return event
