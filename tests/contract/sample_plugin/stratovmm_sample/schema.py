"""The ``"sample"`` key of the JSON config file."""

from __future__ import annotations

from typing import Any

SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sample_id"],
    "properties": {
        "sample_id": {"type": "string", "minLength": 1},
        "level": {"type": "integer", "minimum": 0, "maximum": 255},
    },
}
