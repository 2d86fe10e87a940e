"""The hookimpls of the blk plugin: ``-drive`` / ``"drive"``, StratoVirt 2.x's ``-device
virtio-blk-device``, QMP ``blockdev-add``/``blockdev-del`` and the ``virtio-blk-mmio``
hot-replace driver.

The device model and the image backend are imported when first needed, so that a VM
without a disk does not pay for importing them at start-up."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    ArgCondition,
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    GenericError,
    HotplugDriver,
    HotplugError,
    Join,
    OptionSpec,
    QmpCommand,
    QmpRegistry,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    ValueKind,
    VirtioSlot,
    VmApi,
    hookimpl,
)
from stratovmm_blk.schema import (
    BLOCKDEV_ADD_SCHEMA,
    BLOCKDEV_DEL_SCHEMA,
    DEVICE_ADD_SCHEMA,
    DRIVE_SCHEMA,
)

if TYPE_CHECKING:
    from stratovmm.api import BackendTable, VirtioDevice
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

STRATOVMM_API = "1.2"

# StratoVirt 2.x's -drive keys that change nothing here: the image is read and written with
# preadv/pwritev on the drive's thread whatever the aio engine, and the device offers no
# discard or write-zeroes (VIRTIO_BLK_F_DISCARD, _WRITE_ZEROES), so the guest sends neither.
_V2_IGNORED = (
    SubOption("if", None, values={"none": "none"}, help="none (2.x)"),
    SubOption("format", None, values={"raw": "raw"}, help="raw only (2.x)"),
    SubOption("aio", None, values={"native": "native", "io_uring": "io_uring", "off": "off"},
              help="accepted (2.x); the I/O is preadv/pwritev on the drive's thread"),
    SubOption("discard", None, values={"unmap": True, "ignore": False, "on": True,
                                       "off": False, "true": True, "false": False},
              help="accepted (2.x); no discard is offered to the guest"),
    SubOption("detect-zeroes", None, values={"off": "off", "on": "on", "unmap": "unmap"},
              help="accepted (2.x)"),
)

DRIVE_OPTION = OptionSpec(
    "drive", "virtio-blk disk on a host file (repeatable); alone a disk, as in v0.3, or the"
    " back end a -device virtio-blk-device names (2.x)", "drive", repeatable=True,
    id_field="drive_id",
    sub=(SubOption("id", "drive_id", required=True),
         SubOption("file", "path_on_host", ValueKind.PATH, required=True),
         SubOption("serial", "serial_num", help="up to 20 bytes, /sys/block/vdX/serial"),
         SubOption("readonly", "read_only", ValueKind.BOOL),
         SubOption("direct", "direct", ValueKind.BOOL,
                   help="open with O_DIRECT (default on, as StratoVirt; off where the file"
                        " system refuses it)"),
         SubOption("iothread", "iothread", help="serve the queue on this -iothread"),
         SubOption("iops", "iops", ValueKind.INT, help="requests per second (token bucket)"),
         SubOption("throttling.iops-total", "iops", ValueKind.INT, help="iops (2.x's name)"),
         *_V2_IGNORED),
    metavar="id=ID,file=PATH[,serial=S][,readonly=on|off][,direct=on|off][,iothread=ID]"
            "[,iops=N|,throttling.iops-total=N][,if=none][,format=raw][,aio=A][,discard=D]"
            "[,detect-zeroes=Z]",
)

# StratoVirt 2.x's front end (machine_manager/src/config/drive.rs, parse_blk): it names its
# -drive, whose item it becomes, with the device's id.
BLK_DEVICE_OPTION = OptionSpec(
    "device", "virtio-blk on the -drive named by drive= (StratoVirt 2.x)", "drive",
    driver="virtio-blk-device", repeatable=True, id_field="drive_id",
    sub=(SubOption("drive", None, required=True, help="the -drive id"),
         SubOption("id", "drive_id", required=True, help="the device's id (device_del)"),
         SubOption("serial", "serial_num"),
         SubOption("iothread", "iothread"),
         SubOption("bootindex", None, ValueKind.INT, help="accepted (no firmware boots here)"),
         SubOption("num-queues", None, ValueKind.INT, help="accepted (one queue)")),
    join=Join("drive", "drive"),
    metavar="drive=ID,id=ID[,serial=S][,iothread=ID][,bootindex=N]",
)


def create_drive(ctx: BuildContext, item: dict[str, Any]) -> VirtioSlot:
    """Open the image and build a virtio-blk device for one ``drive`` item, served on its
    ``iothread``.  ``direct`` absent is v0.3's default: on, where the file system allows
    it."""
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    backend = BlockBackend(item["path_on_host"], item.get("read_only", False),
                           item.get("direct"))
    iothread = item.get("iothread")
    device = BlockDevice(item["drive_id"], backend, item.get("serial_num", ""),
                         ctx.loop_for(iothread), item.get("iops"))
    _nodes(ctx).attach_cold(item["drive_id"], device)
    return VirtioSlot(device, iothread)


# -- hot-replace (QMP blockdev-add / blockdev-del + device_add virtio-blk-mmio) ------------

HOTPLUG_SLOTS = 4     # as StratoVirt reserves for blk


# Each node holds an open fd: 64 matches the cap on getfd's named fds; a VM has at most 16
# virtio-mmio windows, so every slot can be attached with room to stage replacements, and
# 64 + 64 named fds + the VMM's own stay far below the usual 1024-fd soft limit.
MAX_NODES = 64


def _nodes(vm: VmApi) -> BackendTable[BlockBackend]:
    """This VM's block nodes (``blockdev-add``'s and the cold drives')."""
    state = vm.state_for("blk")
    nodes: BackendTable[BlockBackend] | None = state.get("nodes")
    if nodes is None:
        from stratovmm.api import BackendTable  # the hotplug module: first use only

        nodes = state["nodes"] = BackendTable("block node", "blockdev-add", "blockdev-del",
                                              MAX_NODES)
    return nodes


def blockdev_add(vm: VmApi, args: dict[str, Any]) -> None:
    """Open an image (a regular file or a block device) as node ``node-name`` for a later
    ``device_add``.  ``cache.direct`` defaults to on, as in v0.3; ``cache.no-flush``,
    ``read-zeros``, ``discard``, ``backing``, ``id``, ``options`` and ``file.aio`` are
    accepted and change nothing (flushes always reach the disk)."""
    from stratovmm_blk.backend import BlockBackend

    name = args["node-name"]
    nodes = _nodes(vm)
    nodes.check_new(name)
    try:
        backend = BlockBackend(args["file"]["filename"], args.get("read-only", False),
                               args.get("cache", {}).get("direct"),
                               option="blockdev-add file.filename")
    except ConfigError as exc:
        raise GenericError(str(exc)) from None
    nodes.add(name, backend)


def blockdev_del(vm: VmApi, args: dict[str, Any]) -> None:
    """Close an unattached node; a node ``device_del`` already released is gone, so that
    succeeds too; a node a device uses is refused."""
    _nodes(vm).delete(args["node-name"])


def placeholder(vm: VmApi, addr: int) -> BlockDevice:
    """An empty virtio-blk (capacity 0) holding reserved slot ``addr``."""
    from stratovmm_blk.device import BlockDevice

    return BlockDevice(f"virtio-blk-slot{addr}", None, "", vm.main_loop)


def takes_cold(device: VirtioDevice) -> bool:
    """Every ``-drive`` goes into a blk slot (StratoVirt's ``add_block_device``)."""
    from stratovmm_blk.device import BlockDevice

    return isinstance(device, BlockDevice)


def plug(vm: VmApi, device: BlockDevice, args: dict[str, Any]) -> None:
    """Give the slot's device the node named by ``drive`` (default: the device ``id``)."""
    node = args.get("drive", args["id"])
    backend = _nodes(vm).attach(node, device)
    if backend is None:
        raise HotplugError(f"no block node {node!r} (blockdev-add it first)", not_found=True)
    device.replace_backend(backend, args.get("serial", ""))


def unplug(vm: VmApi, device: BlockDevice) -> None:
    """Take the image away and close it (its node is gone); the guest sees capacity 0."""
    _nodes(vm).detach(device)
    old = device.replace_backend(None)
    if old is not None:
        old.close()


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-drive`` (with ``-device virtio-blk-device``) and the ``virtio-blk-mmio``
    hot-replace driver."""
    registry.add_device_type(DeviceType("drive", DRIVE_OPTION, DRIVE_SCHEMA, create_drive))
    registry.add_option(BLK_DEVICE_OPTION)
    registry.add_hotplug_driver(HotplugDriver("virtio-blk-mmio", HOTPLUG_SLOTS,
                                              DEVICE_ADD_SCHEMA, placeholder, plug, unplug,
                                              takes_cold))


@hookimpl
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """``blockdev-add`` and ``blockdev-del``."""
    registry.add_command(QmpCommand("blockdev-add", blockdev_add, BLOCKDEV_ADD_SCHEMA,
                                    help="open an image or block device as a node for"
                                         f" device_add (at most {MAX_NODES} nodes)"))
    registry.add_command(QmpCommand("blockdev-del", blockdev_del, BLOCKDEV_DEL_SCHEMA,
                                    help="close a block node no device uses"))


@hookimpl
def vmm_vm_shutdown(vm: VmApi, reason: str) -> None:
    """Close the images blockdev-add opened that no device_add claimed."""
    _nodes(vm).close()


#: blockdev-add opens an existing image read-only or read-write: never creating,
#: truncating, appending to or making a file (O_TMPFILE), and never write-only.
OPEN_EXISTING = ArgCondition(2, "masked_eq", 0, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                             | os.O_APPEND | os.O_TMPFILE)


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules, runtime: RuntimeOptions) -> None:
    """Zero-copy vectored I/O, flush, and the anonymous maps of O_DIRECT bounce buffers;
    with QMP, blockdev-add opens (existing files only, see ``OPEN_EXISTING``), checks and
    locks images after the filter is on."""
    rules.allow("preadv", "pwritev", "preadv2", "pwritev2", "fdatasync", "mmap", "munmap",
                "lseek", "close")
    if runtime.api_channel is not None:
        rules.allow("openat", when=[OPEN_EXISTING])
        rules.allow("newfstatat", "fstat", "flock")
