"""The pvpanic port (QEMU's ISA pvpanic, port 0x505) as a hostile guest drives it."""

from __future__ import annotations

import logging

import pytest

from stratovmm.machine.pvpanic import PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PvPanic


def test_crash_loaded_storm_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """A guest writing CRASH_LOADED 10,000 times (and unknown bits) gets one log line for
    each, counted after; the VM is not ended."""
    panicked: list[int] = []
    device = PvPanic(lambda: panicked.append(1))
    with caplog.at_level(logging.DEBUG, logger="stratovmm.machine.pvpanic"):
        for _ in range(10_000):
            device.write(0, bytes([PVPANIC_CRASH_LOADED]))
            device.write(0, bytes([0x80]))
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "crash kernel" in m]) == 1, messages[:5]
    assert len([m for m in messages if "unknown" in m]) == 1, messages[:5]
    assert device.crash_loaded == 10_000
    assert panicked == []


def test_panicked_wins_and_reads_report_the_events() -> None:
    """PANICKED (with or without CRASH_LOADED) calls the panic handler; a read returns the
    supported events in its first byte."""
    panicked: list[int] = []
    device = PvPanic(lambda: panicked.append(1))
    device.write(0, bytes([PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]))
    assert panicked == [1]
    assert device.read(0, 2) == bytes([PVPANIC_PANICKED | PVPANIC_CRASH_LOADED, 0])
