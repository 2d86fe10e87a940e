"""The device model: one read-only I/O port holding ``level``."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class SampleDevice:
    """Reads of the port return ``level`` (and are logged at info); writes are ignored."""

    def __init__(self, device_id: str, level: int) -> None:
        self.id = device_id
        self.level = level
        self.reads = 0

    def read(self, offset: int, size: int) -> bytes:
        """``level`` in the first byte, zeros after it."""
        log.info("sample %s: guest read level %d", self.id, self.level)
        self.reads += 1
        return bytes([self.level]) + bytes(size - 1)

    def write(self, offset: int, data: bytes) -> None:
        """Read-only register."""

    def stats(self) -> dict[str, int]:
        """Reads of the port, as ``requests`` (QMP ``query-stats``)."""
        return {"requests": self.reads}

    def close(self) -> None:
        """Nothing to release."""
