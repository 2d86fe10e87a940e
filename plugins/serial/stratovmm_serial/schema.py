"""The ``"serial"`` key of the JSON config file (StratoVirt: ``{"stdio": true}``), and the
other ends StratoVirt 2.x's ``-serial chardev:ID`` can name: a pty, a socket or a file."""

from __future__ import annotations

from typing import Any

SERIAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stdio": {"type": "boolean", "description": "bind the UART to the VMM's stdin/stdout"},
        "pty": {"type": "boolean", "const": True,
                "description": "bind it to a new pseudo-terminal, its path printed at"
                               " start-up (-chardev pty)"},
        "chardev_id": {"type": "string", "minLength": 1,
                       "description": "the pty's label in the printed line (the -chardev's"
                                      " id; serial when absent)"},
        "socket_path": {"type": "string", "minLength": 1,
                        "description": "bind it to a unix socket the VMM listens on (one"
                                       " client, the newest wins; -chardev socket)"},
        "file_path": {"type": "string", "minLength": 1,
                      "description": "append its output to a file, no input (-chardev file)"},
    },
}
