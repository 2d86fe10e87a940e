"""The ``"balloon"`` key of the JSON config file and the balloon QMP schemas (StratoVirt v0.3
names: ``deflate_on_oom``; QMP ``balloon`` ``value``, ``query-balloon`` ``actual``)."""

from __future__ import annotations

from typing import Any

BALLOON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deflate_on_oom": {"type": "boolean",
                           "description": "offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM"},
    },
}

BALLOON_COMMAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["value"],
    "properties": {
        "value": {"type": "integer", "minimum": 1,
                  "description": "target guest memory size in bytes"},
    },
}

QUERY_BALLOON_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False}

BALLOON_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["actual"],
    "properties": {
        "actual": {"type": "integer", "minimum": 0,
                   "description": "guest memory size in bytes: RAM minus the inflated pages"},
    },
}

BALLOON_CHANGED_SCHEMA: dict[str, Any] = BALLOON_INFO_SCHEMA
