"""The ``"drive"`` key of the JSON config file (StratoVirt v0.3 names)."""

from __future__ import annotations

from typing import Any

from stratovmm.config.core_options import ITEM_ID_SCHEMA

SERIAL_MAX = 20     # VIRTIO_BLK_ID_BYTES

DRIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["drive_id", "path_on_host"],
    "properties": {
        "drive_id": ITEM_ID_SCHEMA,
        "path_on_host": {"type": "string", "minLength": 1},
        "serial_num": {"type": "string", "maxLength": SERIAL_MAX},
        "read_only": {"type": "boolean"},
        "direct": {"type": "boolean"},
        "iothread": {"type": "string", "minLength": 1},
        "iops": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
    },
}

BLOCKDEV_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["node-name", "file"],
    "properties": {
        "node-name": ITEM_ID_SCHEMA,
        "file": {
            "type": "object", "additionalProperties": False, "required": ["driver", "filename"],
            "properties": {"driver": {"enum": ["file"]},
                           "filename": {"type": "string", "minLength": 1},
                           "aio": {"type": "string"}},
        },
        "cache": {"type": "object", "additionalProperties": False,
                  "properties": {"direct": {"type": "boolean"},
                                 "no-flush": {"type": "boolean"}}},
        "read-only": {"type": "boolean"},
        "driver": {"enum": ["raw"]},
        "iops": {"type": "integer", "minimum": 1},
    },
}

DEVICE_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["driver", "id"],
    "properties": {
        "driver": {"const": "virtio-blk-mmio"},
        "id": ITEM_ID_SCHEMA,
        "addr": {"type": ["string", "integer"]},
        "bus": {"type": "string"},
        "drive": {"type": "string", "minLength": 1},
        "serial": {"type": "string", "maxLength": SERIAL_MAX},
    },
}
