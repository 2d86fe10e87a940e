"""Counters every device model keeps, virtio or not: the five common names that
``query-stats`` reports for every device, plus whatever the device counts itself, and
fault accounting that logs each kind of bad guest input or failed host operation once per
device and then only counts it (the guest is hostile: it must not be able to flood the
log; ``LogOnce``).
"""

from __future__ import annotations

import collections
import logging

from stratovmm.devices.logonce import LogOnce

COMMON_COUNTERS = ("requests", "bytes_read", "bytes_written", "errors", "guest_faults")


class DeviceCounters:
    """Mixin: ``counters``, ``guest_fault()``, ``host_error()``, ``log_once`` and ``stats()``
    for a device with an ``id``."""

    id: str

    def init_counters(self) -> None:
        """Start from zero (called by the device's ``__init__``).  Faults are logged under
        the device class's own module."""
        self.counters: collections.Counter[str] = collections.Counter()
        self.log_once = LogOnce(logging.getLogger(type(self).__module__))

    def guest_fault(self, kind: str, message: str, count: int = 1) -> None:
        """Count bad guest input; log each kind once per device (§2.7: the guest is hostile)."""
        self.counters["guest_faults"] += count
        self.log_once(kind, logging.WARNING, "%s: bad guest input (%s): %s (logged once;"
                      " counted after)", self.id, kind, message)

    def host_error(self, kind: str, message: str) -> None:
        """Count a failed host operation in ``errors``; log each kind once per device (a
        guest retrying a failing request must not flood the log)."""
        self.counters["errors"] += 1
        self.log_once("host-" + kind, logging.ERROR, "%s: %s (logged once per kind; counted"
                      " in errors)", self.id, message)

    def unfolded_counts(self) -> dict[str, int]:
        """Counts a C data path made that are not in ``counters`` yet (it folds them in
        after it served; between, ``stats`` adds them).  Read from any thread."""
        return {}

    def stats(self) -> dict[str, int]:
        """The device's counters (requests, bytes, errors, guest faults), with what a C data
        path counted and has not folded in yet."""
        out = dict.fromkeys(COMMON_COUNTERS, 0)
        out.update(self.counters)
        for name, value in self.unfolded_counts().items():
            out[name] = out.get(name, 0) + value
        return out
