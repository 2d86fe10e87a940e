"""The hookimpls of the vsock plugin: ``-device vsock,id=ID,guest-cid=N[,uds-path=PATH]``.

Backends (SPEC §2): with ``uds-path`` the userspace bridge of ``backend.py``
(Firecracker's hybrid vsock), by choice even where ``/dev/vhost-vsock`` exists.
Without it the device would need vhost-vsock; this plugin does not drive
vhost yet, so that configuration is refused with a message saying which.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from stratovmm.config.model import RuntimeOptions
from stratovmm.context import BuildContext
from stratovmm.errors import ConfigError
from stratovmm.plugin import hookimpl
from stratovmm.registry import (
    ArgCondition,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    SeccompRules,
    SubOption,
    ValueKind,
)
from stratovmm_vsock.backend import PORT_SUFFIX_MAX, SUN_PATH_MAX, VHOST_VSOCK, UnixBridge
from stratovmm_vsock.device import VsockDevice
from stratovmm_vsock.schema import VSOCK_SCHEMA

STRATOVMM_API = "1.0"

VSOCK_OPTION = OptionSpec(
    "device", "virtio-vsock; uds-path: bridge to host unix sockets (at most one)", "vsock",
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


def check_backend(item: dict[str, Any]) -> None:
    """Refuse, before anything is built, a vsock no backend here can serve."""
    path = item.get("uds_path")
    if path is None:
        if os.path.exists(VHOST_VSOCK):
            raise ConfigError(f"{WHERE}: the vhost-vsock backend ({VHOST_VSOCK}) is not"
                              " implemented by this plugin; give uds-path=PATH (JSON"
                              " \"uds_path\") for the userspace backend")
        raise ConfigError(f"{WHERE}: {VHOST_VSOCK} does not exist on this host (vhost_vsock"
                          " module not loaded), so give uds-path=PATH (JSON \"uds_path\") for"
                          " the userspace backend")
    longest = len(os.fsencode(os.path.abspath(path))) + PORT_SUFFIX_MAX
    if longest > SUN_PATH_MAX:
        raise ConfigError(f"{WHERE} uds-path: {path!r} is too long: PATH_<port> must fit the"
                          f" {SUN_PATH_MAX} bytes of a unix socket address")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"{WHERE} uds-path: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{WHERE} uds-path: directory {parent!r} is not writable")


def create_vsock(ctx: BuildContext, item: dict[str, Any]) -> None:
    """Listen on ``uds_path`` and attach the virtio-vsock device."""
    check_backend(item)
    path = os.path.abspath(item["uds_path"])
    try:
        bridge = UnixBridge(path, item["guest_cid"], ctx.main_loop)
    except OSError as exc:
        raise ConfigError(f"{WHERE} uds-path: cannot listen on {path}:"
                          f" {exc.strerror or exc}") from exc
    device = VsockDevice(item["vsock_id"], item["guest_cid"], bridge)
    try:
        ctx.add_device(item["vsock_id"], device)
    except ConfigError:
        bridge.close()
        raise
    ctx.add_virtio_device(device)


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-device vsock`` and ``"vsock"``."""
    registry.add_device_type(DeviceType("vsock", VSOCK_OPTION, VSOCK_SCHEMA, create_vsock))


@hookimpl
def vmm_check_config(config: dict[str, Any], runtime: RuntimeOptions) -> None:
    """The backend must exist; the socket path must be usable."""
    item = config.get("vsock")
    if isinstance(item, dict):
        check_backend(item)


_SOCK_TYPE_MASK = 0xF     # the kernel's SOCK_TYPE_MASK: the type without NONBLOCK/CLOEXEC

#: The only sockets the bridge makes while the VM runs: unix streams.  connect's address
#: is behind a pointer the filter cannot read; the sockets it can be given are these, the
#: unix sockets made before the filter and fds a (trusted) QMP client passed with getfd.
UNIX_STREAM = (ArgCondition(0, "eq", socket.AF_UNIX),
               ArgCondition(1, "masked_eq", socket.SOCK_STREAM, _SOCK_TYPE_MASK))


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Guest-initiated streams open (``UNIX_STREAM`` only) and connect a unix socket while
    the VM runs; a guest SHUTDOWN(SEND) becomes ``shutdown(SHUT_WR)`` on the host socket."""
    rules.allow("socket", when=UNIX_STREAM)
    rules.allow("connect", "shutdown")
