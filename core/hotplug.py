"""QMP ``device_add`` / ``device_del``: hot-replace through the reserved virtio-mmio slots.

The core knows no device: ``device_add`` looks the ``driver`` up among the
``HotplugDriver``s plugins registered, checks the arguments against that
driver's schema, and lets the driver fill the slot at ``addr``.  ``device_del``
empties the slot and emits ``DEVICE_DELETED``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jsonschema

from stratovmm.config.core_options import ITEM_ID_SCHEMA
from stratovmm.errors import ConfigError, HotplugError
from stratovmm.qmp.errors import DeviceNotFound, GenericError
from stratovmm.registry import QmpCommand

if TYPE_CHECKING:
    from stratovmm.context import VmApi
    from stratovmm.registry import HotplugDriver, QmpRegistry

COMMON_PROPERTIES: Mapping[str, Any] = {
    "driver": {"type": "string", "minLength": 1},
    "id": {"type": "string", "minLength": 1, "pattern": ITEM_ID_SCHEMA["pattern"]},
    "addr": {"type": ["string", "integer"]},
    "bus": {"type": "string"},
}
DEVICE_DEL_SCHEMA: Mapping[str, Any] = {
    "type": "object", "required": ["id"], "additionalProperties": False,
    "properties": {"id": {"type": "string", "minLength": 1}},
}


def parse_addr(value: Any) -> int:
    """``"0x1"``, ``"1"`` or ``1`` → 1 (StratoVirt passes the slot as a hex string)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    try:
        return int(value, 0)
    except ValueError:
        raise GenericError(f"device_add: addr {value!r} is not a number") from None


def _driver(vm: VmApi, name: str) -> HotplugDriver:
    drivers = vm.hotplug_drivers()
    if name not in drivers:
        known = ", ".join(sorted(drivers)) or "none"
        raise GenericError(f"device_add: unknown driver {name!r} (hot-pluggable: {known})")
    return drivers[name]


def device_add(vm: VmApi, args: dict[str, Any]) -> None:
    """Fill a reserved slot of ``driver`` at ``addr`` with the device ``id``."""
    driver = _driver(vm, args["driver"])
    try:
        jsonschema.validate(args, driver.schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "arguments"
        raise GenericError(f"device_add {driver.driver}: {where}: {exc.message}") from None
    if vm.device(args["id"]) is not None:
        raise GenericError(f"device_add: id {args['id']!r} is already in use")
    try:
        device = vm.hotplug_plug(driver, parse_addr(args.get("addr")), args["id"], args)
    except (HotplugError, ConfigError) as exc:
        raise GenericError(f"device_add: {exc}") from None
    vm.add_device(args["id"], device)


def device_del(vm: VmApi, args: dict[str, Any]) -> None:
    """Empty the slot of hot-plugged device ``id``; emits DEVICE_DELETED."""
    device_id = args["id"]
    try:
        vm.hotplug_unplug(device_id)
    except HotplugError as exc:
        if exc.not_found:
            raise DeviceNotFound(f"device_del: {exc}") from None
        raise GenericError(f"device_del: {exc}") from None
    vm.remove_device(device_id)
    vm.emit_event("DEVICE_DELETED", {"device": device_id,
                                     "path": f"/machine/peripheral/{device_id}"})


def device_add_schema(drivers: Iterable[HotplugDriver]) -> dict[str, Any]:
    """``device_add``'s arguments: every key some driver accepts (each driver's own
    schema is applied once ``driver`` picked it); the driver names as an enum."""
    drivers = list(drivers)
    properties: dict[str, Any] = dict(COMMON_PROPERTIES)
    for driver in drivers:
        for key, schema in driver.schema.get("properties", {}).items():
            properties.setdefault(key, schema)
    properties["driver"] = {"enum": sorted(d.driver for d in drivers)} if drivers else {
        "type": "string", "minLength": 1}
    return {"type": "object", "additionalProperties": False, "required": ["driver", "id"],
            "properties": properties}


def register_hotplug_commands(registry: QmpRegistry, drivers: Iterable[HotplugDriver]) -> None:
    """Add ``device_add`` and ``device_del`` once the plugins registered their drivers."""
    registry.add_command(QmpCommand("device_add", device_add, device_add_schema(drivers),
                                    help="hot-replace: fill a reserved virtio-mmio slot"))
    registry.add_command(QmpCommand("device_del", device_del, DEVICE_DEL_SCHEMA,
                                    help="hot-replace: empty a slot; emits DEVICE_DELETED"))
