"""The pvpanic device, QEMU's ISA flavour: how a guest tells the host it panicked.

Without a panic channel a VMM cannot tell a guest panic from a reboot: Linux
with ``panic=-1`` resets at once through the same i8042 line as ``reboot``.
QEMU's ``-device pvpanic`` (docs/specs/pvpanic.txt) is one I/O port, 0x505:

* a read returns the events the device supports (bit 0 ``PVPANIC_PANICKED``,
  bit 1 ``PVPANIC_CRASH_LOADED``), which is how a driver probes it;
* a write reports events: ``PANICKED`` (the guest panicked and will not
  recover on its own) wins over ``CRASH_LOADED`` (a kdump kernel took over,
  the guest keeps running), as in QEMU's ``handle_event``; unknown bits are
  logged once and ignored.

StratoVMM ends the VM on ``PANICKED`` with ``SHUTDOWN`` reason ``guest-panic``
and exit status 1, QEMU's ``-action panic=exit-failure``; ``CRASH_LOADED``
is logged once and counted (``crash_loaded``), and the guest runs on (QEMU's
``GUEST_CRASHLOADED``, action run): a guest writing it in a loop must not fill
the log.
The Linux driver (``CONFIG_PVPANIC_MMIO``) finds the port through ACPI
(``QEMU0001``) or a device tree, so a guest kernel without either never
touches it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from stratovmm.devices.logonce import LogOnce

log = logging.getLogger(__name__)

PVPANIC_PORT = 0x505
PVPANIC_LENGTH = 1
PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
SUPPORTED_EVENTS = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED


class PvPanic:
    """Port 0x505; a ``PANICKED`` write calls ``on_panicked`` (on the vCPU thread)."""

    def __init__(self, on_panicked: Callable[[], None]) -> None:
        self._on_panicked = on_panicked
        self._log_once = LogOnce(log)
        self.crash_loaded = 0

    def read(self, offset: int, size: int) -> bytes:
        """The supported events in the first byte (a wider read sees zeros above it)."""
        return bytes([SUPPORTED_EVENTS]).ljust(size, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        """Report the events in the written byte (a wider write: its low byte)."""
        event = data[0] if data else 0
        if event & ~SUPPORTED_EVENTS:
            self._log_once("unknown", logging.WARNING, "pvpanic: unknown event bits %#x ignored"
                           " (logged once)", event & ~SUPPORTED_EVENTS)
        if event & PVPANIC_PANICKED:
            self._on_panicked()
        elif event & PVPANIC_CRASH_LOADED:
            self.crash_loaded += 1
            self._log_once("crash-loaded", logging.WARNING, "pvpanic: the guest loaded a crash"
                           " kernel after a panic; it runs on (logged once; counted after)")
