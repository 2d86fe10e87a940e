"""The device model: one read-only I/O port holding ``level``."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class SampleDevice:
    """Reads of the port return ``level`` (and are logged at info); writes are ignored."""

    def __init__(self, device_id: str, level: int) -> None:
        self.device_id = device_id
        self.level = level

    def read(self, offset: int, size: int) -> bytes:
        """``level`` in the first byte, zeros after it."""
        log.info("sample %s: guest read level %d", self.device_id, self.level)
        return bytes([self.level]) + bytes(size - 1)

    def write(self, offset: int, data: bytes) -> None:
        """Read-only register."""
