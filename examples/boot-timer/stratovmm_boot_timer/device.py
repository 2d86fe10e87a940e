"""The boot timer: one write-only register at offset 0 of a 4 KiB MMIO window.

As in Firecracker (``devices/src/pseudo/boot_timer.rs``), the guest writes the
magic value 123 there once it has booted (an init script: ``devmem ADDR 8 123``);
the VMM then knows how long the boot took.  Firecracker measures from a
timestamp taken in its ``main``; we measure from the process start time the
kernel records (``/proc/self/stat`` field 22, in clock ticks since host boot),
so Python's start-up is counted too.  The resolution is one clock tick
(``SC_CLK_TCK``, 10 ms on Linux).

The device is a ``RegisterDevice`` (the core's base for register windows): it
takes the lock, counts every access and turns the ``GuestError`` that
``write_register`` raises for a write anywhere else, of another value or of an
odd width, into a guest fault (counted, logged once), never an error.  Only the
first magic write is reported; later ones are counted (``signals``), so a guest
cannot flood QMP clients with events.  ``write`` runs on a vCPU thread and does
as little as it can there: it takes the time and hands the report to ``on_boot``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stratovmm.api import GuestError, RegisterDevice

MAGIC = 123                # Firecracker's MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE
WINDOW = 0x1000            # the register window the device claims
WIDTHS = (1, 2, 4, 8)      # access sizes a guest can make in one instruction


@dataclass(frozen=True)
class BootTime:
    """When the guest signalled: wall time since the VMM started, and its CPU time then."""

    elapsed_us: int
    cpu_us: int


class Clock(Protocol):
    """Where the boot timer gets its two readings (a fake one in unit tests)."""

    def elapsed_us(self) -> int: ...
    def cpu_us(self) -> int: ...


class ProcessClock:
    """Time since this process started, and its CPU time so far.

    The start time is read once, when the device is created (before the seccomp
    filter; at signal time only ``clock_gettime`` is needed).
    """

    def __init__(self, stat_path: str = "/proc/self/stat") -> None:
        text = Path(stat_path).read_text()
        # the command name (field 2) may hold spaces and parentheses: split after its
        # last ')'; field 3 (state) is then index 0 and field 22 (starttime) index 19
        fields = text[text.rindex(")") + 2:].split()
        self.start = int(fields[19]) / os.sysconf("SC_CLK_TCK")

    def elapsed_us(self) -> int:
        """Microseconds since the process started (CLOCK_BOOTTIME, the clock of starttime)."""
        return int((time.clock_gettime(time.CLOCK_BOOTTIME) - self.start) * 1_000_000)

    def cpu_us(self) -> int:
        """CPU microseconds used by every thread of the process."""
        return time.process_time_ns() // 1000


class BootTimer(RegisterDevice):
    """The register window; ``on_boot(boot_time)`` is called once, on the vCPU thread that
    made the first magic write."""

    def __init__(self, device_id: str, on_boot: Callable[[BootTime], None],
                 clock: Clock | None = None) -> None:
        super().__init__(device_id, WINDOW)
        self._on_boot = on_boot
        self._clock: Clock = clock if clock is not None else ProcessClock()
        self.boot_time: BootTime | None = None

    @property
    def signals(self) -> int:
        """Magic writes so far (the first one was reported)."""
        return self.counters["signals"]

    def read_register(self, offset: int, size: int) -> bytes:
        """The register is write-only: reads return zeros (as Firecracker's)."""
        return bytes(size)

    def write_register(self, offset: int, data: bytes) -> None:
        """The magic value at offset 0 stops the timer; any other write is a guest fault."""
        value = int.from_bytes(data, "little")
        if offset != 0 or len(data) not in WIDTHS or value != MAGIC:
            raise GuestError(f"{value:#x} is not the boot signal ({MAGIC} at offset 0, in one"
                             " 1-, 2-, 4- or 8-byte store)")
        self.counters["signals"] += 1
        if self.boot_time is None:
            self.boot_time = BootTime(self._clock.elapsed_us(), self._clock.cpu_us())
            self._on_boot(self.boot_time)    # under the device lock: it only queues a call
