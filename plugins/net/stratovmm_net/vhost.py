"""``vhost=on``: the kernel's vhost-net moves the frames between the rings and the tap.

Used only when ``/dev/vhost-net`` exists; otherwise ``vhost=on`` is refused with
a message that says so (``check_vhost``).  The VMM keeps feature negotiation,
config space (MAC, link) and the tap's offloads; the rings are handed over
with the core's vhost-kernel protocol (``stratovmm.virtio.vhost``: memory table, ring
addresses, kicks relayed through the device's loop, calls raised as virtio-mmio
interrupts), and the tap becomes each ring's backend (``VHOST_NET_SET_BACKEND``).

Not exercised against a real ``/dev/vhost-net`` on the development host (it has
none); the ioctl sequence is unit-tested against a recorder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct

from stratovmm.api import (
    BASE_FEATURES,
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    RING_IOCTLS,
    VHOST_GET_FEATURES,
    VHOST_SET_OWNER,
    ConfigError,
    EventLoop,
    VhostBackend,
    VhostRings,
    vhost_iow,
)
from stratovmm_net.device import F_MRG_RXBUF, NetDevice
from stratovmm_net.tap import Tap

log = logging.getLogger(__name__)

VHOST_NET_PATH = "/dev/vhost-net"

_FILE = struct.Struct("<Ii")              # struct vhost_vring_file: index, fd
VHOST_NET_SET_BACKEND = vhost_iow(0x30, _FILE.size)      # <linux/vhost.h>
RUNTIME_IOCTLS = (*RING_IOCTLS, VHOST_NET_SET_BACKEND)

# The ring-format bits vhost implements (QEMU's kernel_feature_bits); the device's own
# bits (MAC, STATUS, offloads) are not vhost's business.
VHOST_DECIDES = ((1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
                 | (1 << F_MRG_RXBUF))


def check_vhost(option: str) -> None:
    """Refuse ``vhost=on`` clearly on a host without ``/dev/vhost-net``."""
    if not os.path.exists(VHOST_NET_PATH):
        raise ConfigError(f"{option}: vhost=on needs {VHOST_NET_PATH}, which this host does not"
                          " have (load the vhost_net module, or use vhost=off for the userspace"
                          " virtio-net backend)")


def open_vhost_net(option: str) -> VhostBackend:
    """``/dev/vhost-net``, owned by this process."""
    check_vhost(option)
    return VhostBackend.open(VHOST_NET_PATH, option)


def adopt_vhost_net(fd: int, option: str) -> VhostBackend:
    """A ``/dev/vhost-net`` fd the parent opened and passed (StratoVirt 2.x's ``vhostfd=N``),
    used as given: this process becomes its owner, as QEMU does with a passed fd."""
    try:
        fcntl.ioctl(fd, VHOST_SET_OWNER)
        features = struct.unpack("<Q", fcntl.ioctl(fd, VHOST_GET_FEATURES, bytes(8)))[0]
    except OSError as exc:
        raise ConfigError(f"{option}: fd {fd} is not a usable vhost-net fd"
                          f" ({exc.strerror})") from None
    return VhostBackend(fd, features, f"{VHOST_NET_PATH} (fd {fd})")


class VhostNetDevice(NetDevice):
    """A virtio-net whose rings vhost-net serves."""

    def __init__(self, device_id: str, tap: Tap, mac: bytes, loop: EventLoop,
                 vhost: VhostBackend) -> None:
        super().__init__(device_id, tap, mac, loop)
        self.vhost = vhost
        self.rings = VhostRings(vhost, loop, len(self.QUEUE_SIZES), VHOST_DECIDES)

    @property
    def avail_features(self) -> int:
        """Ring features only where vhost implements them; device bits as without vhost."""
        return self.rings.offered(BASE_FEATURES | self.device_features())

    def on_activate(self) -> None:
        """Hand both rings and the tap to vhost; a refusal puts the device in NEEDS_RESET."""
        self._apply_offloads()
        try:
            self.rings.start(self)
            assert self.tap is not None
            for index in range(len(self.QUEUE_SIZES)):
                self._set_backend(index, self.tap.fd)
        except (OSError, ValueError) as exc:
            self.counters["errors"] += 1
            log.error("%s: vhost-net refused the rings: %s", self.id, exc)
            self.active = False
            if self.interrupt is not None:
                self.interrupt.needs_reset()

    def _set_backend(self, index: int, fd: int) -> None:
        """Serve ring ``index`` with the tap ``fd`` (-1: stop)."""
        self.vhost.request(VHOST_NET_SET_BACKEND, _FILE.pack(index, fd))

    def native_kick(self, index: int) -> None:
        """None: vhost serves the rings, never the loop's C."""
        return None

    def handle_queue(self, index: int) -> None:
        """Pass the driver's kick on to vhost."""
        self.rings.kick(index)

    def on_reset(self) -> None:
        """Detach the tap, then take the rings back from vhost (§2.1.2: the driver forgot
        them)."""
        if self.rings.running:
            for index in range(len(self.QUEUE_SIZES)):
                try:
                    self._set_backend(index, -1)
                except OSError as exc:
                    log.error("%s: detaching the tap from vhost ring %d failed: %s", self.id,
                              index, exc)
        self.rings.stop(self.id)

    def close(self) -> None:
        """Stop vhost, then close its fds and the tap."""
        self.on_reset()
        self.rings.close(self.id)
        super().close()
