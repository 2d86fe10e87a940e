"""The ``"console"`` key of the JSON config file (StratoVirt v0.3: console_id, socket_path)."""

from __future__ import annotations

from typing import Any

from stratovmm.api import ITEM_ID_SCHEMA

CONSOLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["console_id"],
    "properties": {
        "console_id": ITEM_ID_SCHEMA,
        "socket_path": {"type": "string", "minLength": 1,
                        "description": "unix socket the VMM listens on for the console's client"},
        "file_path": {"type": "string", "minLength": 1,
                      "description": "file the guest's output is appended to, no input"
                                     " (StratoVirt 2.x's -chardev file; give this or"
                                     " socket_path or pty)"},
        "pty": {"type": "boolean", "const": True,
                "description": "a new pseudo-terminal, its path printed at start-up"
                               " (StratoVirt 2.x's -chardev pty)"},
        "chardev_id": {"type": "string", "minLength": 1,
                       "description": "the pty's label in the printed line (the -chardev's"
                                      " id; console_id when absent)"},
    },
}
