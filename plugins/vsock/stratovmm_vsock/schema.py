"""The ``"vsock"`` key of the JSON config file (StratoVirt v0.3: vsock_id, guest_cid;
``uds_path`` is Firecracker's name for the userspace backend's socket)."""

from __future__ import annotations

from typing import Any

from stratovmm.api import ITEM_ID_SCHEMA

MIN_CID = 3                     # 0, 1 reserved, 2 is the host (virtio 1.2 §5.10.4)
MAX_CID = 2**32 - 2             # 0xffffffff is reserved (VMADDR_CID_ANY)

VSOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["vsock_id", "guest_cid"],
    "properties": {
        "vsock_id": ITEM_ID_SCHEMA,
        "guest_cid": {"type": "integer", "minimum": MIN_CID, "maximum": MAX_CID,
                      "description": "the guest's context id, 3 <= N < 2^32-1"},
        "vhost_fd": {"type": "integer", "minimum": 0,
                     "description": "an inherited /dev/vhost-vsock fd used instead of opening"
                                    " it (StratoVirt 2.x's vhostfd=)"},
        "uds_path": {"type": "string", "minLength": 1,
                     "description": "userspace backend: host unix socket bridging the guest's"
                                    " vsock streams (PATH, and PATH_<port> for guest-initiated"
                                    " streams)"},
    },
}
