"""The boot-timer register on its own: no VM, a fake clock, writes as a vCPU makes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stratovmm_boot_timer.device import MAGIC, BootTime, BootTimer, ProcessClock


class FakeClock:
    """Readings a test chooses."""

    def __init__(self) -> None:
        self.now_us = 1_500_000
        self.cpu = 700_000

    def elapsed_us(self) -> int:
        return self.now_us

    def cpu_us(self) -> int:
        return self.cpu


def make() -> tuple[BootTimer, list[BootTime], FakeClock]:
    reports: list[BootTime] = []
    clock = FakeClock()
    return BootTimer("bt", reports.append, clock), reports, clock


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_magic_write_reports_the_boot_time_once(width: int) -> None:
    """123 at offset 0, at any access width, reports the clock's readings once."""
    timer, reports, clock = make()
    timer.write(0, MAGIC.to_bytes(width, "little"))
    assert reports == [BootTime(1_500_000, 700_000)]
    clock.now_us = 9_000_000
    timer.write(0, MAGIC.to_bytes(width, "little"))
    assert reports == [BootTime(1_500_000, 700_000)]        # later signals are only counted
    assert timer.boot_time == BootTime(1_500_000, 700_000)
    stats = timer.stats()
    assert stats["requests"] == 2 and stats["bytes_written"] == 2 * width
    assert stats["signals"] == timer.signals == 2 and stats["guest_faults"] == 0


@pytest.mark.parametrize(("offset", "data"), [
    (0, bytes([122])),                      # another value
    (4, bytes([MAGIC])),                    # another offset
    (0, bytes([MAGIC, 0, 0])),              # a width no instruction makes
    (0, (MAGIC | 1 << 8).to_bytes(2, "little")),
    (0, b""),
])
def test_other_writes_are_guest_faults(offset: int, data: bytes,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Anything but the magic store is counted as a guest fault, logged once, never reported
    (RegisterDevice turns the register hook's GuestError into the fault)."""
    timer, reports, _ = make()
    timer.write(offset, data)
    timer.write(offset, data)
    assert reports == []
    assert timer.stats()["guest_faults"] == 2 and timer.signals == 0
    assert timer.stats()["bytes_written"] == 0
    assert caplog.text.count("bad guest input") == 1


def test_reads_return_zeros() -> None:
    """The register is write-only: reads of any size return zeros, and are no fault."""
    timer, _, _ = make()
    timer.write(0, bytes([MAGIC]))
    assert timer.read(0, 4) == bytes(4)
    assert timer.read(0x800, 1) == b"\0"
    assert timer.stats()["guest_faults"] == 0


def test_stats_has_the_common_counter_names() -> None:
    """stats() always carries the five names query-stats readers expect."""
    timer, _, _ = make()
    assert set(timer.stats()) == {"requests", "bytes_read", "bytes_written", "errors",
                                  "guest_faults"}


def test_process_clock_counts_from_process_start() -> None:
    """Elapsed time is positive, less than the host's uptime, and grows; CPU time is positive."""
    clock = ProcessClock()
    first = clock.elapsed_us()
    uptime_us = float(Path("/proc/uptime").read_text().split()[0]) * 1_000_000
    assert 0 <= first <= uptime_us + 1_000_000
    time.sleep(0.05)
    assert clock.elapsed_us() - first >= 40_000
    assert clock.cpu_us() > 0


def test_process_clock_reads_a_command_name_with_spaces(tmp_path: Path) -> None:
    """A process name with spaces and ')' does not shift the fields (split after the last ')')."""
    stat = tmp_path / "stat"
    fields = ["S"] + ["0"] * 18 + ["4200"] + ["0"] * 10     # field 22 = 4200 ticks
    stat.write_text("1234 (odd ) name) " + " ".join(fields) + "\n")
    clock = ProcessClock(str(stat))
    assert clock.start == 4200 / os.sysconf("SC_CLK_TCK")
