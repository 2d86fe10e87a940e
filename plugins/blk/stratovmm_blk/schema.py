"""The ``"drive"`` key of the JSON config file (StratoVirt v0.3 names)."""

from __future__ import annotations

from typing import Any

from stratovmm.api import ITEM_ID_SCHEMA

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

# StratoVirt v0.3's blockdev-add arguments (qmp_schema.rs), plus file.aio and
# file.discard, which Kata's govmm sends.  v0.3 reads only node-name, file, cache.direct
# and read-only; the rest are accepted and change nothing here either.
BLOCKDEV_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["node-name", "file"],
    "properties": {
        "node-name": ITEM_ID_SCHEMA,
        "file": {
            "type": "object", "additionalProperties": False, "required": ["driver", "filename"],
            "properties": {"driver": {"enum": ["file", "host_device"]},
                           "filename": {"type": "string", "minLength": 1},
                           "aio": {"type": "string"},
                           "discard": {"type": "string"}},
        },
        "cache": {"type": "object", "additionalProperties": False,
                  "properties": {"direct": {"type": "boolean",
                                            "description": "O_DIRECT; default true (v0.3)"},
                                 "no-flush": {"type": "boolean"}}},
        "read-only": {"type": "boolean"},
        "read-zeros": {"type": "boolean"},
        "driver": {"enum": ["raw"], "description": "the image format: only raw"},
        "backing": {"type": ["string", "null"]},
        "discard": {"type": "string"},
        "id": {"type": "string"},
        "options": {"type": "string"},
    },
}

BLOCKDEV_DEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["node-name"],
    "properties": {"node-name": {"type": "string", "minLength": 1}},
}

DEVICE_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["driver", "id"],
    "properties": {
        "driver": {"const": "virtio-blk-mmio"},
        "id": ITEM_ID_SCHEMA,
        "drive": {"type": "string", "minLength": 1,
                  "description": "the blockdev-add node (default: the id, as v0.3)"},
        "serial": {"type": "string", "maxLength": SERIAL_MAX},
    },
}
