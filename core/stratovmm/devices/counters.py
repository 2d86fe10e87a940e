"""Counters every device model keeps, virtio or not: the five common names that
``query-stats`` reports for every device, plus whatever the device counts itself, and
guest-fault accounting that logs each kind of bad input once per device and then only
counts it (the guest is hostile: it must not be able to flood the log).
"""

from __future__ import annotations

import collections
import logging

log = logging.getLogger(__name__)

COMMON_COUNTERS = ("requests", "bytes_read", "bytes_written", "errors", "guest_faults")


class DeviceCounters:
    """Mixin: ``counters``, ``guest_fault()`` and ``stats()`` for a device with an ``id``."""

    id: str

    def init_counters(self) -> None:
        """Start from zero (called by the device's ``__init__``)."""
        self.counters: collections.Counter[str] = collections.Counter()
        self._logged: set[str] = set()

    def guest_fault(self, kind: str, message: str, count: int = 1) -> None:
        """Count bad guest input; log each kind once per device (§2.7: the guest is hostile)."""
        self.counters["guest_faults"] += count
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("%s: bad guest input (%s): %s (logged once; counted after)", self.id,
                        kind, message)

    def stats(self) -> dict[str, int]:
        """The device's counters (requests, bytes, errors, guest faults)."""
        out = dict.fromkeys(COMMON_COUNTERS, 0)
        out.update(self.counters)
        return out
