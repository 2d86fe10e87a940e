"""The i8042 keyboard controller, reduced to its reset line.

Linux ``reboot=k`` waits for the input buffer to drain (status bit 1 clear,
port 0x64) and writes 0xFE ("pulse reset") to the command port; QEMU's
``-device i8042`` and Firecracker end the VM there.  Everything else reads 0.
"""

from __future__ import annotations

from collections.abc import Callable

DATA_PORT = 0x60
COMMAND_PORT = 0x64
CMD_RESET = 0xFE
PORT_BASE = 0x60
PORT_LENGTH = 5


class I8042:
    """Ports 0x60–0x64; a 0xFE command calls ``on_reset``."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self._on_reset = on_reset

    def read(self, offset: int, size: int) -> bytes:
        """Status and data both read 0: no key, no pending output, input buffer empty."""
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        """Only the reset command does anything."""
        if PORT_BASE + offset == COMMAND_PORT and data[:1] == bytes([CMD_RESET]):
            self._on_reset()
