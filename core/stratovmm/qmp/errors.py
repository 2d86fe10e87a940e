"""QMP error classes: what a handler raises to answer ``{"error": {"class", "desc"}}``.

The class names are StratoVirt v0.3's ``QmpErrorClass`` values (QEMU's
``ErrorClass`` names).  A handler raises one of the subclasses (or ``QmpError(desc,
error_class)``); any other exception escaping a handler is a bug in that
handler and is answered as ``GenericError`` by the dispatcher.
"""

from __future__ import annotations

from typing import Any

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
KVM_MISSING_CAP = "KVMMissingCap"
OPERATION_THROTTLED = "OperationThrottled"

ERROR_CLASSES = (GENERIC_ERROR, COMMAND_NOT_FOUND, DEVICE_NOT_FOUND, DEVICE_NOT_ACTIVE,
                 KVM_MISSING_CAP, OPERATION_THROTTLED)


class QmpError(Exception):
    """A command failed; ``error_class`` and ``desc`` go on the wire."""

    error_class = GENERIC_ERROR

    def __init__(self, desc: str, error_class: str | None = None) -> None:
        super().__init__(desc)
        self.desc = desc
        if error_class is not None:
            if error_class not in ERROR_CLASSES:
                raise ValueError(f"unknown QMP error class {error_class!r}")
            self.error_class = error_class

    def to_qmp(self) -> dict[str, Any]:
        """The ``error`` member of the reply."""
        return {"class": self.error_class, "desc": self.desc}


class GenericError(QmpError):
    """Anything without a more specific class (bad arguments, failed operations)."""

    error_class = GENERIC_ERROR


class CommandNotFound(QmpError):
    """No command of that name is registered."""

    error_class = COMMAND_NOT_FOUND


class DeviceNotFound(QmpError):
    """The named device (or named fd, or drive) does not exist."""

    error_class = DEVICE_NOT_FOUND


class DeviceNotActive(QmpError):
    """The device exists but is not in a state that allows the operation."""

    error_class = DEVICE_NOT_ACTIVE


class KVMMissingCap(QmpError):
    """The host's KVM lacks a capability the command needs."""

    error_class = KVM_MISSING_CAP


class OperationThrottled(QmpError):
    """Flow control refused the command (more than the allowed rate)."""

    error_class = OPERATION_THROTTLED
