"""The hookimpls of the vsock plugin: ``-device vsock,id=ID,guest-cid=N[,uds-path=PATH]``, and
StratoVirt 2.x's ``-device vhost-vsock-device,id=ID,guest-cid=N``.

Backends: with ``uds-path`` the userspace bridge of ``backend.py``
(Firecracker's hybrid vsock), by choice even where ``/dev/vhost-vsock`` exists.
Without it, vhost-vsock where ``/dev/vhost-vsock`` exists (``vhost.py``, as
StratoVirt v0.3), else the userspace bridge at a default path
(``paths.py``), logged as a warning, so StratoVirt's own line
``-device vsock,id=vsock0,guest-cid=3`` gives the guest its vsock everywhere.

The device model and both backends are imported when the device is built, so that a VM
without a vsock does not pay for importing them at start-up.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    ArgCondition,
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    RuntimeOptions,
    SeccompRules,
    SubOption,
    ValueKind,
    check_socket_path,
    hookimpl,
)
from stratovmm_vsock import paths
from stratovmm_vsock.paths import VHOST_VSOCK_PATH
from stratovmm_vsock.schema import VSOCK_SCHEMA

if TYPE_CHECKING:
    from stratovmm_vsock.backend import UnixBridge
    from stratovmm_vsock.device import VsockDevice
    from stratovmm_vsock.vhost import VhostVsockDevice

STRATOVMM_API = "1.1"

log = logging.getLogger(__name__)

VSOCK_OPTION = OptionSpec(
    "device", "virtio-vsock: vhost-vsock, or with uds-path (or without /dev/vhost-vsock) a"
    " bridge to host unix sockets (at most one)", "vsock",
    driver="vsock", id_field="vsock_id",
    sub=(SubOption("id", "vsock_id", required=True),
         SubOption("guest-cid", "guest_cid", ValueKind.INT, required=True,
                   help="the guest's CID, 3 <= N < 2^32-1"),
         SubOption("uds-path", "uds_path", ValueKind.PATH,
                   help="host unix socket: CONNECT <port> reaches the guest; guest"
                        " connections to host port P reach PATH_P")),
    metavar="id=ID,guest-cid=N[,uds-path=PATH]",
)

WHERE = "-device vsock"


def inherited_char_fd(fd: int) -> int:
    """``vhostfd=N`` as read from the command line, before this process opens fds of its
    own: it must be open (the parent passed it) and a character device, as
    ``/dev/vhost-vsock`` is; the vhost requests at start-up tell the rest."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ValueError(f"vhostfd={fd}: fd {fd} is not open here (the parent must pass the"
                         f" {VHOST_VSOCK_PATH} it opened)") from None
    if not stat.S_ISCHR(mode):
        raise ValueError(f"vhostfd={fd}: fd {fd} is not a character device, so not"
                         f" {VHOST_VSOCK_PATH}")
    return fd


def vhost_vsock_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """``-device vhost-vsock-device`` (StratoVirt 2.x, Kata's driver) as the ``vsock`` item.
    The name asks for the kernel's vhost-vsock, so unlike ``-device vsock`` it never falls
    back to the unix-socket bridge: without ``/dev/vhost-vsock`` (and no inherited
    ``vhostfd=``, used instead of opening it) it is refused."""
    item = {"vsock_id": values["id"], "guest_cid": values["guest-cid"]}
    if "vhostfd" in values:
        return {**item, "vhost_fd": inherited_char_fd(values["vhostfd"])}
    if not os.path.exists(VHOST_VSOCK_PATH):
        raise ValueError(f"{VHOST_VSOCK_PATH} does not exist on this host, and"
                         " vhost-vsock-device is the kernel's vhost backend (load vhost_vsock,"
                         " or use -device vsock,id=ID,guest-cid=N[,uds-path=PATH] for the"
                         " unix-socket bridge)")
    return item


VHOST_VSOCK_OPTION = OptionSpec(
    "device", "virtio-vsock on the kernel's vhost-vsock only (StratoVirt 2.x; at most one)",
    "vsock", driver="vhost-vsock-device", id_field="vsock_id", build=vhost_vsock_item,
    sub=(SubOption("id", "vsock_id", required=True),
         SubOption("guest-cid", "guest_cid", ValueKind.INT, required=True,
                   help="the guest's CID, 3 <= N < 2^32-1"),
         SubOption("vhostfd", None, ValueKind.INT,
                   help="an inherited /dev/vhost-vsock fd, used instead of opening it")),
    metavar="id=ID,guest-cid=N[,vhostfd=N]",
)


def uses_vhost(item: dict[str, Any]) -> bool:
    """vhost-vsock serves the device: an inherited fd, or no ``uds_path`` and the host has
    the device."""
    return "vhost_fd" in item or ("uds_path" not in item and os.path.exists(VHOST_VSOCK_PATH))


def create_vsock(ctx: BuildContext, item: dict[str, Any]) -> VhostVsockDevice | VsockDevice:
    """Build the virtio-vsock device with its backend."""
    from stratovmm_vsock import vhost as vhost_mod
    from stratovmm_vsock.device import VsockDevice

    vsock_id, cid = item["vsock_id"], item["guest_cid"]
    if uses_vhost(item):
        vhost = (vhost_mod.adopt_vhost_vsock(item["vhost_fd"], cid, "-device vhost-vsock-device")
                 if "vhost_fd" in item else vhost_mod.open_vhost_vsock(cid, WHERE))
        device: VhostVsockDevice | VsockDevice = vhost_mod.VhostVsockDevice(
            vsock_id, cid, vhost, ctx.main_loop)
    else:
        device = VsockDevice(vsock_id, cid, _bridge(ctx, item))
    return device


def _bridge(ctx: BuildContext, item: dict[str, Any]) -> UnixBridge:
    """The userspace bridge at ``uds_path``, else at the default path (logged)."""
    from stratovmm_vsock.backend import UnixBridge

    if "uds_path" in item:
        path, where = os.path.abspath(item["uds_path"]), f"{WHERE} uds-path"
    else:
        path, where = paths.default_socket_path(ctx.name), WHERE
        paths.ensure_private_dir(os.path.dirname(path), where)
    check_socket_path(path, where, paths.PORT_SUFFIX)
    bridge = UnixBridge(path, item["guest_cid"], ctx.main_loop, where=where)
    if "uds_path" not in item:
        log.warning("%s: %s does not exist, so the guest's vsock is bridged to unix sockets:"
                    " CONNECT <port> on %s reaches the guest, guest connections to host port P"
                    " reach %s_P (give uds-path=PATH to choose the path)", item["vsock_id"],
                    VHOST_VSOCK_PATH, path, path)
    return bridge


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-device vsock`` and ``"vsock"``; 2.x's ``-device vhost-vsock-device``."""
    registry.add_device_type(DeviceType("vsock", VSOCK_OPTION, VSOCK_SCHEMA, create_vsock))
    registry.add_option(VHOST_VSOCK_OPTION)


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """A given socket path must be usable; an inherited vhost fd and a socket path are two
    backends."""
    item = config.get("vsock")
    if isinstance(item, dict) and "uds_path" in item and "vhost_fd" in item:
        raise ConfigError(f"{WHERE}: give uds_path (the unix-socket bridge) or vhost_fd"
                          " (vhost-vsock), not both")
    if isinstance(item, dict) and "uds_path" in item:
        check_socket_path(item["uds_path"], f"{WHERE} uds-path", paths.PORT_SUFFIX)


_SOCK_TYPE_MASK = 0xF     # the kernel's SOCK_TYPE_MASK: the type without NONBLOCK/CLOEXEC
# <linux/socket.h> and <linux/net.h>: the numbers the filter compares (Python's socket
# module would give the same, at the cost of importing it in every VM's start-up)
_AF_UNIX = 1
_SOCK_STREAM = 1

#: The only sockets the bridge makes while the VM runs: unix streams.  connect's address
#: is behind a pointer the filter cannot read; the sockets it can be given are these, the
#: unix sockets made before the filter and fds a (trusted) QMP client passed with getfd.
UNIX_STREAM = (ArgCondition(0, "eq", _AF_UNIX),
               ArgCondition(1, "masked_eq", _SOCK_STREAM, _SOCK_TYPE_MASK))


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules, config: dict[str, Any]) -> None:
    """Guest-initiated streams open (``UNIX_STREAM`` only) and connect a unix socket while
    the VM runs; a guest SHUTDOWN(SEND) becomes ``shutdown(SHUT_WR)`` on the host socket.
    vhost-vsock's rings are handed over when the driver is ready."""
    rules.allow("socket", when=UNIX_STREAM)
    rules.allow("connect", "shutdown")
    item = config.get("vsock")
    if isinstance(item, dict) and uses_vhost(item):
        from stratovmm_vsock.vhost import RUNTIME_IOCTLS

        rules.allow_ioctl(*RUNTIME_IOCTLS)
