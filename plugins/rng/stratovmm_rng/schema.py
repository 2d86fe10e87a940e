"""The ``"rng"`` key of the JSON config file (StratoVirt: random_file, bytes_per_sec)."""

from __future__ import annotations

from typing import Any

MIN_RATE = 64
MAX_RATE = 10**9      # exclusive

RNG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["random_file"],
    "properties": {
        "random_file": {"type": "string", "minLength": 1,
                        "description": "host file the entropy is read from"},
        "bytes_per_sec": {"type": "integer", "minimum": MIN_RATE, "exclusiveMaximum": MAX_RATE,
                          "description": "rate limit, 64 <= N < 10^9"},
    },
}
