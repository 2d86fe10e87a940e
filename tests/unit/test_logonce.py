"""``LogOnce``, the one "log this fault once" of the core and the plugins: the first fault of
each kind is logged, repeats are not, and the set of kinds it remembers is bounded."""

from __future__ import annotations

import logging

import pytest

from stratovmm.devices.counters import DeviceCounters
from stratovmm.devices.logonce import MAX_KINDS, LogOnce

log = logging.getLogger("test.logonce")


def test_each_kind_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Ten thousand faults of two kinds give two lines, at the level asked, with the
    arguments formatted."""
    once = LogOnce(log)
    with caplog.at_level(logging.DEBUG, logger="test.logonce"):
        results = [once(kind, logging.ERROR, "fault %s #%d", kind, n)
                   for n in range(5_000) for kind in ("read", "write")]
    assert results.count(True) == 2
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "fault read #0"), (logging.ERROR, "fault write #0")]


def test_kinds_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Kinds built from input (here: numbers) stop being logged, and remembered, after
    ``MAX_KINDS``."""
    once = LogOnce(log)
    with caplog.at_level(logging.WARNING, logger="test.logonce"):
        for n in range(10 * MAX_KINDS):
            once(f"kind-{n}", logging.WARNING, "fault %d", n)
    assert len(caplog.records) == MAX_KINDS


class Device(DeviceCounters):
    def __init__(self) -> None:
        self.id = "dev0"
        self.init_counters()


def test_device_counts_every_fault_and_logs_each_kind_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """``guest_fault`` and ``host_error`` count every occurrence (guest_faults, errors) and log
    the first of each kind, under the device class's module."""
    device = Device()
    with caplog.at_level(logging.WARNING, logger=__name__):
        for _ in range(100):
            device.guest_fault("ring", "bad index")
            device.host_error("read-5", "host read failed: EIO")
    assert device.stats()["guest_faults"] == 100 and device.stats()["errors"] == 100
    assert [r.getMessage() for r in caplog.records] == [
        "dev0: bad guest input (ring): bad index (logged once; counted after)",
        "dev0: host read failed: EIO (logged once per kind; counted in errors)"]
