"""vhost-vsock: the kernel's ``vhost_vsock`` module serves the rx and tx rings, as in
StratoVirt v0.3 (its only vsock backend) and QEMU's ``vhost-vsock-device``.

Used where ``/dev/vhost-vsock`` exists and no ``uds-path`` is given.  At
start-up: ``VHOST_SET_OWNER``, ``VHOST_GET_FEATURES`` and
``VHOST_VSOCK_SET_GUEST_CID`` (as QEMU does it at realize, so a CID that another
VM on the host holds fails before the guest runs).  At DRIVER_OK the core's
vhost-kernel hand-over (``stratovmm.virtio.vhost``) gives vhost the memory table and
the rx and tx rings, then ``VHOST_VSOCK_SET_RUNNING 1``; the event queue stays
with the VMM, because vhost does not serve it (virtio 1.2 §5.10.2: its only
event, TRANSPORT_RESET, follows a migration).  On a reset
``VHOST_VSOCK_SET_RUNNING 0``, then the rings are taken back.

StratoVirt 2.x's ``vhostfd=N`` (Kata passes the fd it opened to pick a free CID):
the inherited fd is used instead of opening the device, with the same sequence
(QEMU also takes ownership of a passed fd); a fd on which ``VHOST_SET_OWNER``,
``VHOST_GET_FEATURES`` or ``VHOST_VSOCK_SET_GUEST_CID`` fails is not a usable
vhost-vsock fd and is refused.  Setting the CID the parent already set on the
same fd is allowed by the kernel (``vhost_vsock_set_cid``: a CID in use only by
*another* vsock is EADDRINUSE).

Not run against a real ``/dev/vhost-vsock``: the development host has none.
The ioctl sequence is unit-tested against a recorder.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

from stratovmm.api import (
    BASE_FEATURES,
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    ID_VSOCK,
    RING_IOCTLS,
    VHOST_GET_FEATURES,
    VHOST_SET_OWNER,
    ConfigError,
    EventLoop,
    Ioctl,
    VhostBackend,
    VhostRings,
    VirtioDevice,
    vhost_iow,
)
from stratovmm_vsock.device import EVENT, QUEUE_SIZE
from stratovmm_vsock.packet import F_STREAM
from stratovmm_vsock.paths import VHOST_VSOCK_PATH

log = logging.getLogger(__name__)

# <linux/vhost.h>
VHOST_VSOCK_SET_GUEST_CID = vhost_iow(0x60, 8)         # __u64
VHOST_VSOCK_SET_RUNNING = vhost_iow(0x61, 4)           # int
RUNTIME_IOCTLS = (*RING_IOCTLS, VHOST_VSOCK_SET_RUNNING)

# The ring-format bits vhost decides; the vsock bits (STREAM, SEQPACKET) are the device's.
VHOST_DECIDES = (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)

_U64 = struct.Struct("<Q")
_INT = struct.Struct("<i")


def open_vhost_vsock(guest_cid: int, option: str, path: str = VHOST_VSOCK_PATH,
                     ioctl: Ioctl = fcntl.ioctl) -> VhostBackend:
    """``path`` owned by this process with the guest's CID set; a CID in use elsewhere is a
    ``ConfigError`` naming ``guest-cid``."""
    backend = VhostBackend.open(path, option, ioctl)
    _set_cid(backend, guest_cid, option, path)
    return backend


def adopt_vhost_vsock(fd: int, guest_cid: int, option: str,
                      ioctl: Ioctl = fcntl.ioctl) -> VhostBackend:
    """The parent's ``/dev/vhost-vsock`` fd (``vhostfd=N``), owned by this process with the
    guest's CID set; a fd that is closed or not vhost-vsock is a ``ConfigError`` naming
    ``vhostfd``."""
    where = f"{option} vhostfd"
    try:
        os.fstat(fd)
    except OSError:
        raise ConfigError(f"{where}: fd {fd} is not open (the parent must pass it)") from None
    try:
        ioctl(fd, VHOST_SET_OWNER)
        features = _U64.unpack(ioctl(fd, VHOST_GET_FEATURES, bytes(8)))[0]
    except OSError as exc:
        raise ConfigError(f"{where}: fd {fd} is not a usable vhost-vsock fd"
                          f" ({exc.strerror})") from None
    path = f"{VHOST_VSOCK_PATH} (fd {fd})"
    backend = VhostBackend(fd, features, path, ioctl)
    _set_cid(backend, guest_cid, where, path)
    return backend


def _set_cid(backend: VhostBackend, guest_cid: int, option: str, path: str) -> None:
    """``VHOST_VSOCK_SET_GUEST_CID``; on failure the backend is closed and the error names
    the CID (in use elsewhere) or the device's refusal (not vhost-vsock, ...)."""
    try:
        backend.request(VHOST_VSOCK_SET_GUEST_CID, _U64.pack(guest_cid))
    except OSError as exc:
        backend.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{option} guest-cid: {guest_cid} is in use by another VM on this"
                              " host") from None
        raise ConfigError(f"{option} guest-cid: {path} refused CID {guest_cid}:"
                          f" {exc.strerror}") from None


class VhostVsockDevice(VirtioDevice):
    """The guest's ``/dev/vsock`` with CID ``guest_cid``, its streams carried by the host
    kernel's vsock (host processes reach it with ``AF_VSOCK``)."""

    DEVICE_TYPE = ID_VSOCK
    QUEUE_SIZES = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, device_id: str, guest_cid: int, vhost: VhostBackend,
                 loop: EventLoop) -> None:
        super().__init__(device_id)
        self.guest_cid = guest_cid
        self.vhost = vhost
        self.rings = VhostRings(vhost, loop, EVENT, VHOST_DECIDES)     # rx and tx: 0, 1

    def device_features(self) -> int:
        """Stream sockets (§5.10.3), as the userspace backend offers."""
        return 1 << F_STREAM

    @property
    def avail_features(self) -> int:
        """Ring features only where vhost implements them."""
        return self.rings.offered(BASE_FEATURES | self.device_features())

    def config_space(self) -> bytes:
        """``struct virtio_vsock_config { le64 guest_cid; }`` (§5.10.4)."""
        return _U64.pack(self.guest_cid)

    def on_activate(self) -> None:
        """Hand rx and tx to vhost and start it; a refusal puts the device in NEEDS_RESET."""
        try:
            self.rings.start(self)
            self._set_running(True)
        except (OSError, ValueError) as exc:
            self.counters["errors"] += 1
            log.error("%s: vhost-vsock refused the rings: %s", self.id, exc)
            self.active = False
            if self.interrupt is not None:
                self.interrupt.needs_reset()

    def _set_running(self, running: bool) -> None:
        self.vhost.request(VHOST_VSOCK_SET_RUNNING, _INT.pack(int(running)))

    def handle_queue(self, index: int) -> None:
        """Pass kicks on rx and tx to vhost; the event queue's buffers stay with us."""
        if index != EVENT:
            self.rings.kick(index)

    def on_reset(self) -> None:
        """Stop vhost, then take the rings back (§2.1.2: the driver forgot them)."""
        if self.rings.running:
            try:
                self._set_running(False)
            except OSError as exc:
                log.error("%s: stopping vhost-vsock failed: %s", self.id, exc)
        self.rings.stop(self.id)

    def close(self) -> None:
        """Stop vhost, then close its fds."""
        self.on_reset()
        self.rings.close(self.id)
