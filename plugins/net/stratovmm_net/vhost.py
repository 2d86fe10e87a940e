"""``vhost=on``: the kernel's vhost-net moves the frames between the rings and the tap.

Used only when ``/dev/vhost-net`` exists; otherwise ``vhost=on`` is refused with
a message that says so (``check_vhost``).  The VMM keeps feature negotiation,
config space (MAC, link) and the tap's offloads; vhost gets the memory table
(guest-physical → our virtual addresses), each ring's size, base index and
addresses, the tap as backend, and two eventfds per ring:

- *kick*: the transport's queue-notify ioeventfd wakes the device's loop, which
  writes vhost's kick eventfd (``handle_queue``).  One hop through the VMM per
  kick: the transport owns the notify eventfds (see the report for the core
  change that would hand them to vhost directly);
- *call*: vhost signals an eventfd on the device's loop, which raises the
  virtio-mmio interrupt through the transport, because the driver reads
  InterruptStatus (§4.2.2) before it looks at the rings, and only the transport
  sets it.  StratoVirt's vhost-net on virtio-mmio works the same way.

Not exercised against a real ``/dev/vhost-net`` on the development host (it has
none); the ioctl sequence is unit-tested against a recorder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

from stratovmm.errors import ConfigError
from stratovmm.eventloop import EPOLLIN, EventLoop
from stratovmm.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1
from stratovmm.virtio.device import BASE_FEATURES
from stratovmm_net.device import F_MRG_RXBUF, NetDevice
from stratovmm_net.tap import Tap

log = logging.getLogger(__name__)

VHOST_NET_PATH = "/dev/vhost-net"

# <linux/vhost.h> ioctl requests
VHOST_GET_FEATURES = 0x8008AF00
VHOST_SET_FEATURES = 0x4008AF00
VHOST_SET_OWNER = 0xAF01
VHOST_SET_MEM_TABLE = 0x4008AF03
VHOST_SET_VRING_NUM = 0x4008AF10
VHOST_SET_VRING_ADDR = 0x4028AF11
VHOST_SET_VRING_BASE = 0x4008AF12
VHOST_GET_VRING_BASE = 0xC008AF12
VHOST_SET_VRING_KICK = 0x4008AF20
VHOST_SET_VRING_CALL = 0x4008AF21
VHOST_NET_SET_BACKEND = 0x4008AF30
RUNTIME_IOCTLS = (VHOST_SET_FEATURES, VHOST_SET_MEM_TABLE, VHOST_SET_VRING_NUM,
                  VHOST_SET_VRING_ADDR, VHOST_SET_VRING_BASE, VHOST_GET_VRING_BASE,
                  VHOST_SET_VRING_KICK, VHOST_SET_VRING_CALL, VHOST_NET_SET_BACKEND)

_U64 = struct.Struct("<Q")
_MEMORY = struct.Struct("<II")            # struct vhost_memory: nregions, padding
_REGION = struct.Struct("<QQQQ")          # guest_phys_addr, memory_size, userspace_addr, flags
_STATE = struct.Struct("<II")             # struct vhost_vring_state: index, num
_ADDR = struct.Struct("<IIQQQQ")          # struct vhost_vring_addr
_FILE = struct.Struct("<Ii")              # struct vhost_vring_file: index, fd

# The ring-format bits vhost implements (QEMU's kernel_feature_bits); the device's own
# bits (MAC, STATUS, offloads) are not vhost's business.
VHOST_DECIDES = ((1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
                 | (1 << F_MRG_RXBUF))

Ioctl = Callable[..., Any]


def check_vhost(option: str) -> None:
    """Refuse ``vhost=on`` clearly on a host without ``/dev/vhost-net``."""
    if not os.path.exists(VHOST_NET_PATH):
        raise ConfigError(f"{option}: vhost=on needs {VHOST_NET_PATH}, which this host does not"
                          " have (load the vhost_net module, or use vhost=off for the userspace"
                          " virtio-net backend)")


class VhostNet:
    """An open ``/dev/vhost-net`` owned by this process."""

    def __init__(self, fd: int, features: int, ioctl: Ioctl = fcntl.ioctl) -> None:
        self.fd = fd
        self.features = features
        self._ioctl = ioctl

    @classmethod
    def open(cls, option: str) -> VhostNet:
        """Open it and become its owner (its worker then works in our address space)."""
        check_vhost(option)
        try:
            fd = os.open(VHOST_NET_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"{option}: cannot open {VHOST_NET_PATH}: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, VHOST_SET_OWNER)
            features = _U64.unpack(fcntl.ioctl(fd, VHOST_GET_FEATURES, bytes(8)))[0]
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{option}: {VHOST_NET_PATH}: {exc.strerror}") from None
        return cls(fd, features)

    def set_features(self, features: int) -> None:
        """The ring features the driver accepted."""
        self._ioctl(self.fd, VHOST_SET_FEATURES, _U64.pack(features))

    def set_mem_table(self, regions: list[tuple[int, int, int]]) -> None:
        """(guest address, size, our virtual address) of every RAM region."""
        table = _MEMORY.pack(len(regions), 0) + b"".join(
            _REGION.pack(gpa, size, hva, 0) for gpa, size, hva in regions)
        self._ioctl(self.fd, VHOST_SET_MEM_TABLE, table)

    def set_vring(self, index: int, size: int, base: int, rings: tuple[int, int, int],
                  kick: int, call: int) -> None:
        """Ring ``index``: size, next avail index, (desc, avail, used) addresses, eventfds."""
        desc, avail, used = rings
        self._ioctl(self.fd, VHOST_SET_VRING_NUM, _STATE.pack(index, size))
        self._ioctl(self.fd, VHOST_SET_VRING_BASE, _STATE.pack(index, base))
        self._ioctl(self.fd, VHOST_SET_VRING_ADDR, _ADDR.pack(index, 0, desc, used, avail, 0))
        self._ioctl(self.fd, VHOST_SET_VRING_KICK, _FILE.pack(index, kick))
        self._ioctl(self.fd, VHOST_SET_VRING_CALL, _FILE.pack(index, call))

    def set_backend(self, index: int, fd: int) -> None:
        """Serve ring ``index`` with the tap ``fd`` (-1: stop)."""
        self._ioctl(self.fd, VHOST_NET_SET_BACKEND, _FILE.pack(index, fd))

    def vring_base(self, index: int) -> int:
        """Stop ring ``index`` and return its next avail index."""
        reply = self._ioctl(self.fd, VHOST_GET_VRING_BASE, _STATE.pack(index, 0))
        return int(_STATE.unpack(reply)[1])

    def close(self) -> None:
        """Release the vhost device (its worker stops)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VhostNetDevice(NetDevice):
    """A virtio-net whose rings vhost-net serves."""

    def __init__(self, device_id: str, tap: Tap, mac: bytes, loop: EventLoop,
                 vhost: VhostNet) -> None:
        super().__init__(device_id, tap, mac, loop)
        self.vhost = vhost
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self._kicks = [os.eventfd(0, flags) for _ in self.QUEUE_SIZES]
        self._calls = [os.eventfd(0, flags) for _ in self.QUEUE_SIZES]
        self._running = False

    @property
    def avail_features(self) -> int:
        """Ring features only where vhost implements them; device bits as without vhost."""
        bits = BASE_FEATURES | self.device_features()
        return (bits & ~VHOST_DECIDES) | (bits & VHOST_DECIDES & self.vhost.features)

    def on_activate(self) -> None:
        """Hand both rings and the tap to vhost; a refusal puts the device in NEEDS_RESET."""
        self._apply_offloads()
        try:
            self._start_vhost()
        except (OSError, ValueError) as exc:
            self.counters["errors"] += 1
            log.error("%s: vhost-net refused the rings: %s", self.id, exc)
            self.active = False
            if self.interrupt is not None:
                self.interrupt.needs_reset()

    def _start_vhost(self) -> None:
        memory = self.memory
        assert memory is not None and self.tap is not None
        regions = [(r.gpa, r.size, memory.host_address(r))  # type: ignore[attr-defined]
                   for r in memory.regions]                 # type: ignore[attr-defined]
        self.vhost.set_features(self.acked_features & self.vhost.features & VHOST_DECIDES)
        self.vhost.set_mem_table(regions)
        for index, queue in enumerate(self.queues):
            if queue is None:
                raise ValueError(f"queue {index} was not set up (virtio-net needs both)")
            rings = tuple(_host_address(regions, gpa)
                          for gpa in (queue.desc_table, queue.avail_ring, queue.used_ring))
            self.vhost.set_vring(index, queue.size, queue.last_avail,
                                 (rings[0], rings[1], rings[2]),
                                 self._kicks[index], self._calls[index])
            self._loop.register(self._calls[index], EPOLLIN, self._call_handler(index))
        for index in range(len(self.queues)):
            self.vhost.set_backend(index, self.tap.fd)
        self._running = True

    def _call_handler(self, index: int) -> Callable[[int], None]:
        def handler(_events: int) -> None:
            try:
                os.eventfd_read(self._calls[index])
            except BlockingIOError:
                return
            self.signal_used()
        return handler

    def handle_queue(self, index: int) -> None:
        """Pass the driver's kick on to vhost."""
        if self._running:
            os.eventfd_write(self._kicks[index], 1)

    def on_reset(self) -> None:
        """Take the rings back from vhost (§2.1.2: the driver forgot them)."""
        for fd in self._calls:
            self._loop.unregister(fd)
        if not self._running:
            return
        self._running = False
        for index in range(len(self.QUEUE_SIZES)):
            try:
                self.vhost.set_backend(index, -1)
                self.vhost.vring_base(index)
            except OSError as exc:
                log.error("%s: stopping vhost ring %d failed: %s", self.id, index, exc)

    def close(self) -> None:
        """Stop vhost, then close its fds and the tap."""
        self.on_reset()
        for fd in self._kicks + self._calls:
            os.close(fd)
        self._kicks, self._calls = [], []
        self.vhost.close()
        super().close()


def _host_address(regions: list[tuple[int, int, int]], gpa: int) -> int:
    for start, size, hva in regions:
        if start <= gpa < start + size:
            return hva + gpa - start
    raise ValueError(f"guest address {gpa:#x} is outside RAM")
