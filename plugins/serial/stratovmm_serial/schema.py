"""The ``"serial"`` key of the JSON config file (StratoVirt: ``{"stdio": true}``)."""

from __future__ import annotations

from typing import Any

SERIAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["stdio"],
    "properties": {
        "stdio": {"type": "boolean", "description": "bind the UART to the VMM's stdin/stdout"},
    },
}
