"""A plugin module defined in the tests: a repeatable ``-widget`` device with the JSON key
``"widget"`` (an id, an integer, a boolean, an iothread), and a one-per-VM ``-gizmo``."""

from __future__ import annotations

from typing import Any

from stratovmm.api import (
    ITEM_ID_SCHEMA,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    SubOption,
    ValueKind,
    hookimpl,
)

STRATOVMM_API = "1.1"

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["widget_id"],
    "properties": {
        "widget_id": ITEM_ID_SCHEMA,
        "size": {"type": "integer", "minimum": 1, "maximum": 100},
        "fast": {"type": "boolean"},
        "iothread": {"type": "string"},
    },
}

GIZMO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["gizmo_id"],
    "properties": {"gizmo_id": ITEM_ID_SCHEMA, "level": {"type": "integer"}},
}

WIDGET_OPTION = OptionSpec(
    "widget", "a test device (repeatable)", "widget", repeatable=True, id_field="widget_id",
    sub=(SubOption("id", "widget_id", required=True),
         SubOption("size", "size", ValueKind.INT),
         SubOption("fast", "fast", ValueKind.BOOL),
         SubOption("iothread", "iothread")),
    metavar="id=ID[,size=N][,fast=on|off][,iothread=ID]",
)

GIZMO_OPTION = OptionSpec(
    "gizmo", "a test device (at most one)", "gizmo", id_field="gizmo_id",
    sub=(SubOption("id", "gizmo_id", required=True), SubOption("level", "level", ValueKind.INT)),
    metavar="id=ID[,level=N]",
)

def create(ctx: Any, item: dict[str, Any]) -> Any:
    """Never called: the unit tier parses configurations and builds no VM."""
    raise AssertionError("the unit tier builds no VM")


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-widget`` and ``-gizmo``."""
    registry.add_device_type(DeviceType("widget", WIDGET_OPTION, WIDGET_SCHEMA, create))
    registry.add_device_type(DeviceType("gizmo", GIZMO_OPTION, GIZMO_SCHEMA, create))

