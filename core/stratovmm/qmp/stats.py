"""QMP ``query-stats``: the counters of every device in the VM, plugins' devices included.

Every device the VM recorded (``vm.devices()``: what the factories returned, and
the devices ``device_add`` filled) is walked; each has a ``stats()`` method
(the ``Device`` protocol) and reports what it returns: a flat
``{name: integer}`` dict whose common names are ``requests``, ``bytes_read``,
``bytes_written``, ``errors`` and ``guest_faults``, plus any of the device's own.

The reply borrows the shape of QEMU's ``query-stats`` (a list of ``StatsResult``
objects, each ``{"provider", "qom-path", "stats": [{"name", "value"}]}``) so
clients that parse QEMU's output can read ours; QEMU's targets are ``vm`` and
``vcpu`` (KVM's own statistics), ours is ``device`` and each result also names
its ``device`` id.  The counters are read on the main loop while devices may be
counting on their iothreads: each value is read whole (the GIL), the set of
values of one device is not a snapshot taken at one instant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.qmp.errors import DeviceNotFound
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.machine.vmapi import VmApi
    from stratovmm.registry import QmpRegistry

log = logging.getLogger(__name__)

PROVIDER = "stratovmm"

QUERY_STATS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "target": {"enum": ["device"], "description": "what to report (only device counters)"},
        "devices": {"type": "array", "items": {"type": "string", "minLength": 1},
                    "description": "report only these device ids (default: every device)"},
    },
}

QUERY_STATS_RETURNS: Mapping[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["provider", "qom-path", "device", "stats"],
        "properties": {
            "provider": {"const": PROVIDER},
            "qom-path": {"type": "string"},
            "device": {"type": "string"},
            "stats": {"type": "array", "items": {
                "type": "object", "required": ["name", "value"],
                "properties": {"name": {"type": "string"}, "value": {"type": "integer"}}}},
        },
    },
}


def device_stats(device_id: str, device: Any) -> list[dict[str, Any]]:
    """``[{"name", "value"}]`` from ``device.stats()``, by name; a device without the
    method has no counters, and one whose method fails is logged and reported empty
    (one broken plugin must not hide every other device's counters)."""
    stats = getattr(device, "stats", None)
    if not callable(stats):
        return []
    try:
        values = stats()
        items = sorted((str(name), value) for name, value in dict(values).items())
    except Exception:
        log.exception("device %s: stats() failed", device_id)
        return []
    return [{"name": name, "value": value} for name, value in items
            if isinstance(value, int) and not isinstance(value, bool)]


def query_stats(vm: VmApi, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The counters of every recorded device (or of the ids in ``devices``), in the order
    the devices were created."""
    devices = dict(vm.devices())
    wanted = args.get("devices")
    if wanted is not None:
        missing = [name for name in wanted if name not in devices]
        if missing:
            raise DeviceNotFound(f"Device '{missing[0]}' not found")
        devices = {name: devices[name] for name in devices if name in wanted}
    return [{"provider": PROVIDER, "qom-path": f"/machine/peripheral/{device_id}",
             "device": device_id, "stats": device_stats(device_id, device)}
            for device_id, device in devices.items()]


def register_stats_commands(registry: QmpRegistry) -> None:
    """Register ``query-stats`` (called by ``register_core_commands``)."""
    registry.add_command(QmpCommand(
        "query-stats", query_stats, QUERY_STATS_SCHEMA, returns=QUERY_STATS_RETURNS,
        help="per-device counters (requests, bytes, errors, guest faults) of every device"))
