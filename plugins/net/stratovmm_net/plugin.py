"""The hookimpls of the net plugin: ``-netdev`` / ``"net"``, QMP ``netdev_add`` and the
``virtio-net-mmio`` hot-replace driver.

The device model and the vhost-net backend are imported when first needed, so that a VM
without a NIC does not pay for importing them at start-up."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
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
from stratovmm_net import tap as tap_mod
from stratovmm_net.schema import (
    DEVICE_ADD_SCHEMA,
    NET_SCHEMA,
    NETDEV_ADD_SCHEMA,
    NETDEV_DEL_SCHEMA,
)
from stratovmm_net.tap import Tap

if TYPE_CHECKING:
    from stratovmm.api import BackendTable, VhostBackend, VirtioDevice
    from stratovmm_net.device import NetDevice

STRATOVMM_API = "1.2"

log = logging.getLogger(__name__)

_VHOST_VALUES = {"on": "vhost-kernel", "true": "vhost-kernel", "off": None, "false": None}

NETDEV_OPTION = OptionSpec(
    "netdev", "virtio-net on a host tap device (repeatable)", "net", repeatable=True,
    id_field="iface_id",
    sub=(SubOption("id", "iface_id", required=True),
         SubOption("netdev", "host_dev_name", required=True,
                   help="an existing tap interface (ip tuntap add dev TAP mode tap)"),
         SubOption("mac", "mac", help="guest MAC; default: a locally administered one"),
         SubOption("iothread", "iothread", help="serve the queues on this -iothread"),
         SubOption("vhost", "vhost_type", values=_VHOST_VALUES,
                   help="hand the rings to /dev/vhost-net"),
         SubOption("fds", "tap_fd", ValueKind.INT,
                   help="an open tap fd inherited from the parent, used instead of opening"
                        " netdev= by name (as StratoVirt's fds=)")),
    metavar="id=ID,netdev=TAP[,mac=MAC][,iothread=ID][,vhost=on|off][,fds=FD]",
)

MAX_QUEUE_PAIRS = 16  # StratoVirt 2.x: MAX_VIRTIO_QUEUE / 2


def parse_fds(text: str) -> list[int]:
    """An inherited fd, or several for a multi-queue tap (``N`` or ``N:M:...``)."""
    parts = text.split(":")
    if not all(part.isdigit() for part in parts):
        raise ValueError("is not a fd number, or fd numbers joined by ':'")
    fds = [int(part) for part in parts]
    if len(set(fds)) != len(fds):
        raise ValueError("names one fd twice")
    return fds


def tap_fragment(values: Mapping[str, Any]) -> dict[str, Any]:
    """``-netdev tap,...`` (StratoVirt 2.x's ``parse_netdev``) as a ``net`` item: the tap by
    name or by inherited fds, vhost with an optional inherited vhost-net fd."""
    if "fd" in values and "fds" in values:
        raise ValueError("give fd= or fds=, not both")
    if len(values.get("fd", [])) > 1:
        raise ValueError("fd= takes one fd (fds= takes several)")
    fds: list[int] = values.get("fd", values.get("fds", []))
    if not fds and "ifname" not in values:
        raise ValueError("the tap is missing: give ifname=TAP, fd=N or fds=N:M")
    if not 1 <= values.get("queues", 1) <= MAX_QUEUE_PAIRS:
        raise ValueError(f"queues={values['queues']} is not 1..{MAX_QUEUE_PAIRS}")
    item: dict[str, Any] = {"iface_id": values["id"]}
    if "ifname" in values:
        item["host_dev_name"] = values["ifname"]
    if fds:
        item["tap_fd"] = fds[0]       # an inherited fd wins over ifname, as 2.x's create_tap
        if fds[1:]:
            item["tap_queue_fds"] = fds[1:]
    if values.get("vhost"):
        item["vhost_type"] = values["vhost"]
    if "vhostfd" in values:
        if not values.get("vhost"):
            raise ValueError("vhostfd= needs vhost=on")
        item["vhost_fd"] = values["vhostfd"]
    return item


# StratoVirt 2.x's back end (machine_manager/src/config/network.rs): a NIC on its own, as a
# v0.3 -netdev is, until a -device virtio-net-device names it.
TAP_OPTION = OptionSpec(
    "netdev", "virtio-net on a tap (StratoVirt 2.x's form; a NIC alone, or the back end a"
    " -device virtio-net-device names)", "net", driver="tap", repeatable=True,
    id_field="iface_id", build=tap_fragment,
    sub=(SubOption("id", "iface_id", required=True),
         SubOption("ifname", "host_dev_name", help="an existing tap interface"),
         SubOption("fd", "tap_fd", parse=parse_fds, help="an open tap fd from the parent"),
         SubOption("fds", "tap_fd", parse=parse_fds,
                   help="the fds of a multi-queue tap: the first is served, the other queues"
                        " detached"),
         SubOption("vhost", "vhost_type", values=_VHOST_VALUES,
                   help="hand the rings to vhost-net"),
         SubOption("vhostfd", "vhost_fd", ValueKind.INT,
                   help="an open /dev/vhost-net fd from the parent"),
         SubOption("queues", None, ValueKind.INT, help="accepted (one queue pair is served)")),
    metavar="id=ID,(ifname=TAP|fd=N|fds=N:M)[,vhost=on|off][,vhostfd=N][,queues=N]",
)

NET_DEVICE_OPTION = OptionSpec(
    "device", "virtio-net on the -netdev named by netdev= (StratoVirt 2.x)", "net",
    driver="virtio-net-device", repeatable=True, id_field="iface_id",
    sub=(SubOption("netdev", None, required=True, help="the -netdev id"),
         SubOption("id", "iface_id", help="the device's id (default: the netdev's)"),
         SubOption("mac", "mac"),
         SubOption("iothread", "iothread"),
         SubOption("mq", None, ValueKind.BOOL, help="accepted (one queue pair)")),
    join=Join("netdev", "net"),
    metavar="netdev=ID[,id=ID][,mac=MAC][,iothread=ID]",
)

HOTPLUG_SLOTS = 2     # as StratoVirt reserves for net
TUN_POOL = 8          # netdev_add ifname=... per VM under seccomp (fds=... has no limit)


def create_net(ctx: BuildContext, item: dict[str, Any]) -> VirtioSlot:
    """Attach to the tap and build a virtio-net device for one ``net`` item, served on its
    ``iothread``."""
    from stratovmm_net.device import NetDevice, generated_mac, parse_mac
    from stratovmm_net.vhost import VhostNetDevice

    iface = item["iface_id"]
    option = f"-netdev id={iface}"
    mac = parse_mac(item["mac"], f"{option} mac") if "mac" in item else None
    iothread = item.get("iothread")
    loop = ctx.loop_for(iothread)
    vhost = _open_vhost(item, option) if item.get("vhost_type") else None
    try:
        tap = _open_tap(item, option)
    except ConfigError:
        if vhost is not None:
            vhost.close()
        raise
    if mac is None:
        mac = generated_mac(f"{item.get('host_dev_name', tap.name)}/{iface}")
    device = (NetDevice(iface, tap, mac, loop) if vhost is None
              else VhostNetDevice(iface, tap, mac, loop, vhost))
    _netdevs(ctx).attach_cold(iface, device)
    return VirtioSlot(device, iothread)


def _open_vhost(item: dict[str, Any], option: str) -> VhostBackend:
    """The parent's vhost-net fd (``vhostfd=``), else ``/dev/vhost-net``."""
    from stratovmm_net.vhost import adopt_vhost_net, open_vhost_net

    if "vhost_fd" in item:
        return adopt_vhost_net(item["vhost_fd"], f"{option} vhostfd")
    return open_vhost_net(f"{option} vhost")


def _open_tap(item: dict[str, Any], option: str) -> Tap:
    """The parent's tap fd (the other queues of a multi-queue tap detached), else the tap
    by name."""
    if "tap_fd" not in item:
        return Tap.open(item["host_dev_name"], f"{option} netdev")
    tap = Tap.from_fd(item["tap_fd"], f"{option} fds")
    try:
        tap_mod.detach_queues(tap, item.get("tap_queue_fds", []), f"{option} fds")
    except ConfigError:
        tap.close()
        raise
    return tap


# -- QMP netdev_add and hot-replace (device_add virtio-net-mmio) ---------------------------------


# Each netdev holds a tap fd; 64, as for blk's nodes and getfd's named fds.
MAX_NETDEVS = 64


def _netdevs(vm: VmApi) -> BackendTable[Tap]:
    """This VM's netdevs: taps netdev_add opened, and the cold NICs' (by their id)."""
    state = vm.state_for("net")
    netdevs: BackendTable[Tap] | None = state.get("netdevs")
    if netdevs is None:
        from stratovmm.api import BackendTable  # the hotplug module: first use only

        netdevs = state["netdevs"] = BackendTable("netdev", "netdev_add", "netdev_del",
                                                  MAX_NETDEVS)
    return netdevs


def _tun_pool(vm: VmApi) -> list[int] | None:
    """Unattached /dev/net/tun fds opened before the seccomp filter, for netdev_add ifname;
    None when ``vmm_vm_created`` opened none (no QMP, or no filter to forbid the open)."""
    pool: list[int] | None = vm.state_for("net").get("tun_fds")
    return pool


def _open_by_name(vm: VmApi, ifname: str) -> Tap:
    option = "netdev_add ifname"
    pool = _tun_pool(vm)
    if pool is None:
        return Tap.open(ifname, option)
    if not pool:
        raise ConfigError(f"{option}: the {TUN_POOL} /dev/net/tun fds opened before the seccomp"
                          " filter are used up; pass an open tap fd with getfd and"
                          " netdev_add fds=NAME instead")
    return Tap.open(ifname, option, tun_fd=pool.pop())


def _fd_name(fds: str) -> str:
    """The getfd name in ``fds``: with several (QEMU's ``a:b`` for multiqueue) the last, as
    v0.3 takes it."""
    return fds.split(":")[-1]


def _wants_vhost(args: dict[str, Any]) -> bool:
    vhost = args.get("vhost", False)
    if isinstance(vhost, str):
        vhost = vhost.lower() in ("on", "true", "yes")
    return bool(vhost) or "vhostfds" in args


def _open_netdev(vm: VmApi, args: dict[str, Any]) -> Tap:
    if _wants_vhost(args):
        from stratovmm_net.vhost import check_vhost

        check_vhost("netdev_add vhost")
        raise ConfigError("netdev_add vhost: vhost-net serves only -netdev NICs; hot-plugged"
                          " NICs use the userspace backend (vhost off)")
    if "ifname" in args:
        return _open_by_name(vm, args["ifname"])
    name = _fd_name(args["fds"])
    fd = vm.take_fd(name)
    if fd is None:
        raise ConfigError(f"netdev_add fds: no fd named {name!r} (pass it with getfd first;"
                          " a bare fd number is not taken)")
    try:
        return Tap.from_fd(fd, "netdev_add fds")
    except ConfigError:
        os.close(fd)
        raise


def netdev_add(vm: VmApi, args: dict[str, Any]) -> None:
    """Open a tap (by ``ifname``, or the fd passed with ``getfd`` and named by ``fds``).
    v0.3's other arguments (``queues``, ``script``, ``downscript``, ``dnssearch``) are
    accepted and change nothing: one queue pair, no scripts run."""
    netdev_id = args["id"]
    netdevs = _netdevs(vm)
    netdevs.check_new(netdev_id)
    if ("ifname" in args) == ("fds" in args):
        raise GenericError("netdev_add: give exactly one of ifname (a tap name) and fds"
                           " (a fd name from getfd)")
    try:
        tap = _open_netdev(vm, args)
    except ConfigError as exc:
        raise GenericError(str(exc)) from None
    netdevs.add(netdev_id, tap)


def netdev_del(vm: VmApi, args: dict[str, Any]) -> None:
    """Close a netdev no NIC uses (a tap ``device_del`` released is already closed)."""
    _netdevs(vm).delete(args["id"])


def takes_cold(device: VirtioDevice) -> bool:
    """A ``-netdev`` NIC goes into a net slot unless vhost serves it (StratoVirt gives a
    vhost NIC a window of its own)."""
    from stratovmm_net.device import NetDevice

    return type(device) is NetDevice


def placeholder(vm: VmApi, addr: int) -> NetDevice:
    """An empty virtio-net (no tap, link down) holding reserved slot ``addr``."""
    from stratovmm_net.device import NetDevice, generated_mac

    device = NetDevice(f"virtio-net-slot{addr}", None,
                       generated_mac(f"slot{addr}/{vm.name or ''}"), vm.main_loop)
    return device


def plug(vm: VmApi, device: NetDevice, args: dict[str, Any]) -> None:
    """Give the slot the netdev named by ``netdev`` (default: the device ``id``, as v0.3)."""
    from stratovmm_net.device import parse_mac

    netdev_id = args.get("netdev", args["id"])
    mac = parse_mac(args["mac"], "device_add mac") if "mac" in args else None
    tap = _netdevs(vm).attach(netdev_id, device)
    if tap is None:
        raise HotplugError(f"no netdev {netdev_id!r} (netdev_add it first)", not_found=True)
    device.attach_tap(tap, mac)


def unplug(vm: VmApi, device: NetDevice) -> None:
    """Take the tap away (closed, its netdev gone); the guest sees the link go down."""
    _netdevs(vm).detach(device)
    old = device.detach_tap()
    if old is not None:
        old.close()


# -- hooks ----------------------------------------------------------------------------------------


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-netdev`` and the ``virtio-net-mmio`` hot-replace driver."""
    registry.add_device_type(DeviceType("netdev", NETDEV_OPTION, NET_SCHEMA, create_net))
    registry.add_option(TAP_OPTION)
    registry.add_option(NET_DEVICE_OPTION)
    registry.add_hotplug_driver(HotplugDriver("virtio-net-mmio", HOTPLUG_SLOTS,
                                              DEVICE_ADD_SCHEMA, placeholder, plug, unplug,
                                              takes_cold))


@hookimpl
def vmm_register_qmp_commands(registry: QmpRegistry) -> None:
    """``netdev_add`` and ``netdev_del``."""
    registry.add_command(QmpCommand("netdev_add", netdev_add, NETDEV_ADD_SCHEMA,
                                    help="open a tap (ifname, or fds from getfd) for device_add"
                                         f" (at most {MAX_NETDEVS} netdevs)"))
    registry.add_command(QmpCommand("netdev_del", netdev_del, NETDEV_DEL_SCHEMA,
                                    help="close a netdev no NIC uses"))


@hookimpl
def vmm_check_config(config: dict[str, Any]) -> None:
    """Each NIC has a tap (by name or an inherited fd), and a vhost-net fd only with vhost."""
    for item in config.get("net", []):
        option = f"-netdev id={item['iface_id']}"
        if "host_dev_name" not in item and "tap_fd" not in item:
            raise ConfigError(f"{option}: no tap: give netdev=TAP (ifname=TAP) or an inherited"
                              " tap fd (fds=N)")
        if "tap_queue_fds" in item and "tap_fd" not in item:
            raise ConfigError(f"{option}: tap_queue_fds without tap_fd")
        if "vhost_fd" in item and not item.get("vhost_type"):
            raise ConfigError(f"{option} vhostfd: needs vhost=on")


@hookimpl
def vmm_vm_created(vm: VmApi, runtime: RuntimeOptions) -> None:
    """With QMP and the seccomp filter, open the /dev/net/tun fds netdev_add ifname=... will
    attach later: after this hook the filter allows no read-write open (the core's openat
    rule)."""
    if runtime.api_channel is None or not runtime.seccomp:
        return
    pool: list[int] = []
    vm.state_for("net")["tun_fds"] = pool
    try:
        for _ in range(TUN_POOL):
            pool.append(tap_mod.open_tun("netdev_add"))
    except ConfigError as exc:
        log.warning("%s: netdev_add ifname=... will not work", exc)


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules, config: dict[str, Any],
                      runtime: RuntimeOptions) -> None:
    """Frames move with readv/writev; TUNSETOFFLOAD (and, when a NIC uses vhost-net, the
    ring set-up) run when a driver becomes ready; with QMP, netdev_add attaches taps
    (TUNSETIFF...)."""
    rules.allow("readv", "writev")
    rules.allow_ioctl(tap_mod.TUNSETOFFLOAD)
    if runtime.api_channel is not None:
        rules.allow_ioctl(*tap_mod.IOCTLS)
    if any(item.get("vhost_type") for item in config.get("net", [])):
        from stratovmm_net.vhost import RUNTIME_IOCTLS

        rules.allow_ioctl(*RUNTIME_IOCTLS)


@hookimpl
def vmm_vm_shutdown(vm: VmApi, reason: str) -> None:
    """Close taps that netdev_add opened and no device_add claimed, and spare tun fds."""
    _netdevs(vm).close()
    pool = _tun_pool(vm) or []
    while pool:
        os.close(pool.pop())
