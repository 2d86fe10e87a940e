"""The vhost-kernel protocol (<linux/vhost.h>): handing a virtio device's rings to a kernel
worker such as ``/dev/vhost-net`` or ``/dev/vhost-vsock``.

``VhostBackend`` is one open vhost character device: the generic requests
every vhost device takes (``VHOST_SET_OWNER``, ``VHOST_GET/SET_FEATURES``,
``VHOST_SET_MEM_TABLE``, ``VHOST_SET_VRING_*``, ``VHOST_GET_VRING_BASE``) and
``request()`` for a device's own (``VHOST_NET_SET_BACKEND``,
``VHOST_VSOCK_SET_RUNNING``, ...).

``VhostRings`` is the hand-over the device plugins share.  The VMM keeps
feature negotiation, config space and the transport; vhost gets the memory
table (guest-physical → our virtual addresses), each ring's size, next avail
index and addresses, and two eventfds per ring:

- *kick*: the transport's queue-notify ioeventfd wakes the device's loop,
  which writes vhost's kick eventfd (``kick``).  One hop through the VMM per
  kick, because the transport owns the notify eventfds;
- *call*: vhost signals an eventfd on the device's loop, which raises the
  virtio-mmio interrupt through the transport: the driver reads
  InterruptStatus (virtio 1.2 §4.2.2) before it looks at the rings, and only
  the transport sets it.  StratoVirt's vhost devices on virtio-mmio work the
  same way.

A device starts the rings when its driver sets DRIVER_OK and takes them back
(``stop``: ``VHOST_GET_VRING_BASE`` stops each ring) on a reset (§2.1.2: the
driver forgot them).  Requests are made through ``ioctl`` (``fcntl.ioctl`` by
default) so that the sequence can be recorded in tests on hosts without the
device.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

from stratovmm.errors import ConfigError
from stratovmm.host.eventloop import EPOLLIN, EventLoop
from stratovmm.memory import GuestMemoryProtocol
from stratovmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)

VHOST_VIRTIO = 0xAF             # the ioctl type of every vhost request
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """An ioctl request number, as <asm-generic/ioctl.h>'s _IOC() builds it."""
    return (direction << 30) | (size << 16) | (VHOST_VIRTIO << 8) | nr


def vhost_io(nr: int) -> int:
    """``_IO(VHOST_VIRTIO, nr)``."""
    return _ioc(0, nr, 0)


def vhost_iow(nr: int, size: int) -> int:
    """``_IOW(VHOST_VIRTIO, nr, type)`` for a ``type`` of ``size`` bytes."""
    return _ioc(_IOC_WRITE, nr, size)


def vhost_ior(nr: int, size: int) -> int:
    """``_IOR(VHOST_VIRTIO, nr, type)``."""
    return _ioc(_IOC_READ, nr, size)


def vhost_iowr(nr: int, size: int) -> int:
    """``_IOWR(VHOST_VIRTIO, nr, type)``."""
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


_U64 = struct.Struct("<Q")
_MEMORY = struct.Struct("<II")            # struct vhost_memory: nregions, padding
_REGION = struct.Struct("<QQQQ")          # guest_phys_addr, memory_size, userspace_addr, flags
_STATE = struct.Struct("<II")             # struct vhost_vring_state: index, num
_ADDR = struct.Struct("<IIQQQQ")          # struct vhost_vring_addr
_FILE = struct.Struct("<Ii")              # struct vhost_vring_file: index, fd

# <linux/vhost.h>
VHOST_GET_FEATURES = vhost_ior(0x00, 8)
VHOST_SET_FEATURES = vhost_iow(0x00, 8)
VHOST_SET_OWNER = vhost_io(0x01)
VHOST_SET_MEM_TABLE = vhost_iow(0x03, _MEMORY.size)
VHOST_SET_VRING_NUM = vhost_iow(0x10, _STATE.size)
VHOST_SET_VRING_ADDR = vhost_iow(0x11, _ADDR.size)
VHOST_SET_VRING_BASE = vhost_iow(0x12, _STATE.size)
VHOST_GET_VRING_BASE = vhost_iowr(0x12, _STATE.size)
VHOST_SET_VRING_KICK = vhost_iow(0x20, _FILE.size)
VHOST_SET_VRING_CALL = vhost_iow(0x21, _FILE.size)

# What a device's rings need after the seccomp filter is on (set-up happens at DRIVER_OK).
RING_IOCTLS = (VHOST_SET_FEATURES, VHOST_SET_MEM_TABLE, VHOST_SET_VRING_NUM,
               VHOST_SET_VRING_ADDR, VHOST_SET_VRING_BASE, VHOST_GET_VRING_BASE,
               VHOST_SET_VRING_KICK, VHOST_SET_VRING_CALL)

Ioctl = Callable[..., Any]


def memory_table(memory: GuestMemoryProtocol) -> list[tuple[int, int, int]]:
    """(guest address, size, our virtual address) of every RAM region: what vhost's worker
    translates the rings' and buffers' guest addresses with."""
    return [(r.gpa, r.size, memory.host_address(r)) for r in memory.regions]


def host_address(table: list[tuple[int, int, int]], gpa: int) -> int:
    """Our virtual address of guest address ``gpa`` (``ValueError`` outside RAM)."""
    for start, size, hva in table:
        if start <= gpa < start + size:
            return hva + gpa - start
    raise ValueError(f"guest address {gpa:#x} is outside RAM")


class VhostBackend:
    """An open vhost character device owned by this process."""

    def __init__(self, fd: int, features: int, path: str, ioctl: Ioctl = fcntl.ioctl) -> None:
        self.fd = fd
        self.features = features
        self.path = path
        self._ioctl = ioctl

    @classmethod
    def open(cls, path: str, option: str, ioctl: Ioctl = fcntl.ioctl) -> VhostBackend:
        """Open ``path`` and become its owner (its worker then works in our address space);
        every failure is a ``ConfigError`` naming ``option``."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"{option}: cannot open {path}: {exc.strerror}") from None
        try:
            ioctl(fd, VHOST_SET_OWNER)
            features = _U64.unpack(ioctl(fd, VHOST_GET_FEATURES, bytes(8)))[0]
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{option}: {path}: {exc.strerror}") from None
        return cls(fd, features, path, ioctl)

    def request(self, request: int, arg: bytes = b"") -> bytes:
        """A device-specific request (``VHOST_NET_SET_BACKEND``, ...); returns the argument
        as the kernel left it."""
        return bytes(self._ioctl(self.fd, request, arg))

    def set_features(self, features: int) -> None:
        """The features the driver accepted, of those vhost implements."""
        self._ioctl(self.fd, VHOST_SET_FEATURES, _U64.pack(features))

    def set_mem_table(self, table: list[tuple[int, int, int]]) -> None:
        """(guest address, size, our virtual address) of every RAM region."""
        packed = _MEMORY.pack(len(table), 0) + b"".join(
            _REGION.pack(gpa, size, hva, 0) for gpa, size, hva in table)
        self._ioctl(self.fd, VHOST_SET_MEM_TABLE, packed)

    def set_vring(self, index: int, size: int, base: int, rings: tuple[int, int, int],
                  kick: int, call: int) -> None:
        """Ring ``index``: size, next avail index, (desc, avail, used) addresses, eventfds."""
        desc, avail, used = rings
        self._ioctl(self.fd, VHOST_SET_VRING_NUM, _STATE.pack(index, size))
        self._ioctl(self.fd, VHOST_SET_VRING_BASE, _STATE.pack(index, base))
        self._ioctl(self.fd, VHOST_SET_VRING_ADDR, _ADDR.pack(index, 0, desc, used, avail, 0))
        self._ioctl(self.fd, VHOST_SET_VRING_KICK, _FILE.pack(index, kick))
        self._ioctl(self.fd, VHOST_SET_VRING_CALL, _FILE.pack(index, call))

    def vring_base(self, index: int) -> int:
        """Stop ring ``index`` and return its next avail index."""
        reply = self._ioctl(self.fd, VHOST_GET_VRING_BASE, _STATE.pack(index, 0))
        return int(_STATE.unpack(reply)[1])

    def close(self) -> None:
        """Release the device (its worker stops)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VhostRings:
    """Rings ``0 .. count-1`` of one device served by ``backend``; ``ring_features`` are the
    ring-format bits vhost decides (the device's own bits are not vhost's business)."""

    def __init__(self, backend: VhostBackend, loop: EventLoop, count: int,
                 ring_features: int) -> None:
        self.backend = backend
        self._loop = loop
        self._ring_features = ring_features
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self._kicks = [os.eventfd(0, flags) for _ in range(count)]
        self._calls = [os.eventfd(0, flags) for _ in range(count)]
        self._registered: list[int] = []
        self.running = False

    def offered(self, features: int) -> int:
        """``features`` with the ring bits vhost lacks removed (offered to the driver)."""
        decides = self._ring_features
        return (features & ~decides) | (features & decides & self.backend.features)

    def start(self, device: VirtioDevice) -> None:
        """Hand the rings to vhost (DRIVER_OK); ``OSError``/``ValueError`` if it refuses or a
        ring is missing, with the rings left stopped."""
        if device.memory is None:
            raise ValueError("the device has no guest memory (not activated)")
        table = memory_table(device.memory)
        self.backend.set_features(device.acked_features & self.backend.features
                                  & self._ring_features)
        self.backend.set_mem_table(table)
        for index, (kick, call) in enumerate(zip(self._kicks, self._calls, strict=True)):
            queue = device.queues[index] if index < len(device.queues) else None
            if queue is None:
                raise ValueError(f"queue {index} was not set up")
            desc, avail, used = (host_address(table, gpa) for gpa in
                                 (queue.desc_table, queue.avail_ring, queue.used_ring))
            self.backend.set_vring(index, queue.size, queue.last_avail, (desc, avail, used),
                                   kick, call)
            self._loop.register(call, EPOLLIN, self._call_handler(device, call))
            self._registered.append(call)
        self.running = True

    def _call_handler(self, device: VirtioDevice, call: int) -> Callable[[int], None]:
        def handler(_events: int) -> None:
            try:
                os.eventfd_read(call)
            except BlockingIOError:
                return
            device.signal_used()
        return handler

    def kick(self, index: int) -> None:
        """Pass the driver's kick on ring ``index`` to vhost."""
        if self.running and index < len(self._kicks):
            os.eventfd_write(self._kicks[index], 1)

    def stop(self, device_id: str) -> None:
        """Take the rings back: unregister the calls, stop each ring (failures are logged:
        the driver is resetting and the next DRIVER_OK sets everything again)."""
        for fd in self._registered:
            self._loop.unregister(fd)
        self._registered = []
        if not self.running:
            return
        self.running = False
        for index in range(len(self._kicks)):
            try:
                self.backend.vring_base(index)
            except OSError as exc:
                log.error("%s: stopping vhost ring %d failed: %s", device_id, index, exc)

    def close(self, device_id: str) -> None:
        """Stop, then close the eventfds and the vhost device."""
        self.stop(device_id)
        for fd in self._kicks + self._calls:
            os.close(fd)
        self._kicks, self._calls = [], []
        self.backend.close()
