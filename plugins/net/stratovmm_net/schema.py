"""The ``"net"`` key of the JSON config file (StratoVirt v0.3 names) and the QMP schemas."""

from __future__ import annotations

from typing import Any

from stratovmm.api import ITEM_ID_SCHEMA, whole_string

MAC_PATTERN = whole_string(r"[0-9A-Fa-f]{2}([:-])([0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")
MAC_SCHEMA: dict[str, Any] = {"type": "string", "pattern": MAC_PATTERN,
                              "x-message": "is not a MAC address (e.g. 52:54:00:12:34:56)"}
IFNAME_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 15,
                                 "description": "host tap interface name (IFNAMSIZ - 1 bytes)"}

# fds 0-2 are the VMM's stdio; a parent passes others (Go's ExtraFiles: 3, 4, ...)
_INHERITED_FD: dict[str, Any] = {"type": "integer", "minimum": 3}

NET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["iface_id"],
    "properties": {
        "iface_id": ITEM_ID_SCHEMA,
        "host_dev_name": IFNAME_SCHEMA,
        "mac": MAC_SCHEMA,
        "iothread": {"type": "string", "minLength": 1},
        # StratoVirt: "vhost-kernel"; null (the command line's vhost=off) = no vhost
        "vhost_type": {"enum": ["vhost-kernel", None]},
        # an open tap fd inherited from the parent (StratoVirt's tap_fd / -netdev fds=)
        "tap_fd": _INHERITED_FD,
        "tap_queue_fds": {"type": "array", "items": _INHERITED_FD, "maxItems": 15,
                          "description": "the other queues of a multi-queue tap (fds=A:B:...),"
                                         " detached and closed: one queue pair is served"},
        "vhost_fd": {**_INHERITED_FD, "description": "an open /dev/vhost-net fd from the"
                                                     " parent (vhostfd=)"},
    },
}

# StratoVirt v0.3's netdev_add arguments (qmp_schema.rs: every value a string); only id,
# ifname and fds mean something there and here.
NETDEV_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "properties": {
        "id": ITEM_ID_SCHEMA,
        "type": {"enum": ["tap"]},
        "ifname": IFNAME_SCHEMA,
        "fds": {"type": "string", "minLength": 1,
                "description": "name of a tap fd passed before with getfd (of a:b:c, the last)"},
        "vhost": {"type": ["boolean", "string"],
                  "description": "refused: vhost-net serves only -netdev NICs"},
        "vhostfds": {"type": "string", "description": "refused, as vhost"},
        "queues": {"type": ["string", "integer"], "description": "ignored: one queue pair"},
        "script": {"type": "string"},
        "downscript": {"type": "string"},
        "dnssearch": {"type": "string"},
    },
}

NETDEV_DEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "properties": {"id": {"type": "string", "minLength": 1}},
}

DEVICE_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["driver", "id"],
    "properties": {
        "driver": {"const": "virtio-net-mmio"},
        "id": ITEM_ID_SCHEMA,
        "netdev": {"type": "string", "minLength": 1,
                   "description": "the netdev_add id (default: the id, as v0.3)"},
        "mac": {"type": "string", "minLength": 1,
                "description": "guest MAC (checked by the plugin, with a readable message)"},
    },
}
