"""A base for devices behind a register window (MMIO or port I/O) that are not virtio.

The bus calls ``read``/``write`` on vCPU threads, possibly several at once, for any
offset and width the guest chooses.  This class does the part every such device needs
and is easy to get wrong: it takes the device lock, counts each access, answers a read
with exactly ``size`` bytes, and turns a bad access — outside the window, or one the
device does not decode, reported by raising ``GuestError`` from a register hook — into
a counted guest fault logged once: the read answers all-ones (like an unassigned
address) and the write is ignored.  Subclasses implement ``read_register`` and/or
``write_register``, and ``close`` when they hold host resources.  What must not run
under the device lock (raising an interrupt, handing bytes to a backend that may
block) a hook passes to ``after_unlock``: it runs on the same thread once the access
has released the lock, so a slow backend stalls only the vCPU that wrote, never
another thread waiting for the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stratovmm.devices.counters import DeviceCounters
from stratovmm.errors import GuestError


class RegisterDevice(DeviceCounters):
    """A ``BusDevice`` with locking, counters and guest-fault accounting built in."""

    def __init__(self, device_id: str, window: int) -> None:
        self.id = device_id
        self.window = window
        self.lock = threading.Lock()
        self._after: list[Callable[[], None]] = []
        self.init_counters()

    def read(self, offset: int, size: int) -> bytes:
        """A guest read (vCPU thread): the register's bytes, or all-ones for a bad access."""
        with self.lock:
            data = self._read_locked(offset, size)
            after, self._after = self._after, []
        for callback in after:
            callback()
        return data

    def write(self, offset: int, data: bytes) -> None:
        """A guest write (vCPU thread): handed to ``write_register``, or dropped and counted."""
        with self.lock:
            self._write_locked(offset, data)
            after, self._after = self._after, []
        for callback in after:
            callback()

    def after_unlock(self, callback: Callable[[], None]) -> None:
        """From a register hook: run ``callback`` on this thread once the access has
        released the lock (an interrupt, output to a backend that may block)."""
        self._after.append(callback)

    def _read_locked(self, offset: int, size: int) -> bytes:
        self.counters["requests"] += 1
        try:
            self._check_window(offset, size)
            data = self.read_register(offset, size)
        except GuestError as exc:
            self.guest_fault("read", f"{size}-byte read at {offset:#x}: {exc}")
            return b"\xff" * size
        self.counters["bytes_read"] += size
        return bytes(data[:size]).ljust(size, b"\xff")

    def _write_locked(self, offset: int, data: bytes) -> None:
        self.counters["requests"] += 1
        try:
            self._check_window(offset, len(data))
            self.write_register(offset, data)
        except GuestError as exc:
            self.guest_fault("write", f"{len(data)}-byte write at {offset:#x}: {exc}")
            return
        self.counters["bytes_written"] += len(data)

    def read_register(self, offset: int, size: int) -> bytes:
        """Subclasses: the ``size`` bytes at ``offset`` (called with the lock held); raise
        ``GuestError`` for an access the device does not decode."""
        raise GuestError("the device has no readable registers")

    def write_register(self, offset: int, data: bytes) -> None:
        """Subclasses: act on a write (called with the lock held); raise ``GuestError`` for
        an access the device does not decode."""
        raise GuestError("the device has no writable registers")

    def close(self) -> None:
        """Release host resources; the core calls it when the VM ends."""

    def _check_window(self, offset: int, size: int) -> None:
        if offset < 0 or size <= 0 or offset + size > self.window:
            raise GuestError(f"outside the {self.window:#x}-byte window")
