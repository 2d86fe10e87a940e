"""The hookimpls of the sample plugin: ``-sample id=ID[,level=N]`` / ``"sample": {...}``."""

from __future__ import annotations

from typing import Any

from stratovmm.api import (
    BuildContext,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    PioWindow,
    SubOption,
    ValueKind,
    hookimpl,
)
from stratovmm_sample.device import SampleDevice
from stratovmm_sample.schema import SAMPLE_SCHEMA

STRATOVMM_API = "1.1"

PORT = 0x5A0

SAMPLE_OPTION = OptionSpec(
    "sample", "a sample third-party device (one I/O port at 0x5a0)", "sample",
    id_field="sample_id",
    sub=(SubOption("id", "sample_id", required=True),
         SubOption("level", "level", ValueKind.INT, help="the value the port reads, 0..255")),
    metavar="id=ID[,level=N]",
)


def create_sample(ctx: BuildContext, item: dict[str, Any]) -> PioWindow:
    """The device on its one I/O port (the core claims the port and records the device)."""
    return PioWindow(SampleDevice(item["sample_id"], item.get("level", 0)), PORT, 1)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-sample``."""
    registry.add_device_type(DeviceType("sample", SAMPLE_OPTION, SAMPLE_SCHEMA, create_sample))

