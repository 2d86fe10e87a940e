"""The hookimpls of the blk plugin: ``-drive`` / ``"drive"``."""

from __future__ import annotations

from typing import Any

from stratovmm.context import BuildContext
from stratovmm.plugin import hookimpl
from stratovmm.registry import DeviceRegistry, DeviceType, OptionSpec, SubOption, ValueKind

from stratovmm_blk.backend import BlockBackend
from stratovmm_blk.device import BlockDevice
from stratovmm_blk.schema import DRIVE_SCHEMA

STRATOVMM_API = "1.0"

DRIVE_OPTION = OptionSpec(
    "drive", "virtio-blk disk on a host file (repeatable)", "drive", repeatable=True,
    id_field="drive_id",
    sub=(SubOption("id", "drive_id", required=True),
         SubOption("file", "path_on_host", ValueKind.PATH, required=True),
         SubOption("serial", "serial_num", help="up to 20 bytes, /sys/block/vdX/serial"),
         SubOption("readonly", "read_only", ValueKind.BOOL),
         SubOption("direct", "direct", ValueKind.BOOL, help="open with O_DIRECT"),
         SubOption("iothread", "iothread", help="serve the queue on this -iothread"),
         SubOption("iops", "iops", ValueKind.INT, help="requests per second (token bucket)")),
    metavar="id=ID,file=PATH[,serial=S][,readonly=on|off][,direct=on|off][,iothread=ID][,iops=N]",
)


def create_drive(ctx: BuildContext, item: dict[str, Any]) -> None:
    """Open the image and attach a virtio-blk device for one ``drive`` item."""
    backend = BlockBackend(item["path_on_host"], item.get("read_only", False),
                           item.get("direct", False))
    iothread = item.get("iothread")
    device = BlockDevice(item["drive_id"], backend, item.get("serial_num", ""),
                         ctx.loop_for(iothread), item.get("iops"))
    ctx.add_virtio_device(device, iothread)
    ctx.add_device(item["drive_id"], device)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-drive``."""
    registry.add_device_type(DeviceType("drive", DRIVE_OPTION, DRIVE_SCHEMA, create_drive))
