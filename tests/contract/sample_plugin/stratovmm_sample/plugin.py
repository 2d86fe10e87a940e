"""The hookimpls of the sample plugin: ``-sample id=ID[,level=N]`` / ``"sample": {...}``."""

from __future__ import annotations

from typing import Any

from stratovmm.machine.vmapi import BuildContext
from stratovmm.plugin import hookimpl
from stratovmm.registry import DeviceRegistry, DeviceType, OptionSpec, SubOption, ValueKind
from stratovmm_sample.device import SampleDevice
from stratovmm_sample.schema import SAMPLE_SCHEMA

STRATOVMM_API = "1.0"

PORT = 0x5A0

SAMPLE_OPTION = OptionSpec(
    "sample", "a sample third-party device (one I/O port at 0x5a0)", "sample",
    id_field="sample_id",
    sub=(SubOption("id", "sample_id", required=True),
         SubOption("level", "level", ValueKind.INT, help="the value the port reads, 0..255")),
    metavar="id=ID[,level=N]",
)


def create_sample(ctx: BuildContext, item: dict[str, Any]) -> None:
    """Put the device on the PIO bus and record it under its id."""
    device = SampleDevice(item["sample_id"], item.get("level", 0))
    ctx.add_pio_device(device, PORT, 1, f"sample {item['sample_id']}")
    ctx.add_device(item["sample_id"], device)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-sample``."""
    registry.add_device_type(DeviceType("sample", SAMPLE_OPTION, SAMPLE_SCHEMA, create_sample))

