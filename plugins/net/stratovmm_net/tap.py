"""The host side of a NIC: a tap device opened ``IFF_TAP|IFF_NO_PI|IFF_VNET_HDR``.

Why each flag:

- ``IFF_NO_PI``: frames come and go without the 4-byte packet-information prefix,
  so a frame is exactly what the guest sent;
- ``IFF_VNET_HDR`` with ``TUNSETVNETHDRSZ`` 12: every frame read or written
  carries the 12-byte ``virtio_net_hdr`` a VIRTIO_F_VERSION_1 driver uses
  (virtio 1.2 §5.1.6), so a TX chain goes to the tap as it is, header included,
  and a received frame lands in the guest's buffers with its header already in
  place: no copy, no translation.  The header is little-endian, as VERSION_1
  wants, because the host is x86 (``TUNSETVNETLE`` matters only on big-endian
  hosts).

Offloads: ``TUNSETOFFLOAD`` tells the tap which offloaded frames (partial
checksums, TSO, UFO) the host stack may hand *to us*, i.e. what the guest
accepts on receive.  ``probe_offloads`` finds what this kernel's tap accepts, so
the device offers only the matching ``VIRTIO_NET_F_GUEST_*`` bits;
``set_offload`` applies what the guest acknowledged.  Frames *from* the guest
may always carry GSO metadata: any ``IFF_VNET_HDR`` tap takes them.

Opening by name never creates a device: the kernel's ``TUNSETIFF`` makes a new
tap when the name is free, so a tap that comes back without ``IFF_PERSIST`` was
just created by us, and is refused (and destroyed by closing it) as missing.
"""

from __future__ import annotations

import fcntl
import os
import struct

from stratovmm.api import ConfigError

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16

# <linux/if_tun.h> ioctl requests
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9
IOCTLS = (TUNSETIFF, TUNGETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ)

# interface flags (struct ifreq ifr_flags)
IFF_TAP = 0x0002
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR

# TUNSETOFFLOAD bits
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10

VNET_HDR_LEN = 12        # struct virtio_net_hdr with num_buffers (virtio 1.2 §5.1.6)

_IFREQ = struct.Struct("16sH22x")     # struct ifreq: name, flags, rest of the union
# The tun driver takes TSO/ECN/UFO only together with CSUM; each set is tried on its own.
_PROBES = (TUN_F_CSUM, TUN_F_CSUM | TUN_F_TSO4, TUN_F_CSUM | TUN_F_TSO6,
           TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN, TUN_F_CSUM | TUN_F_UFO)


class Tap:
    """An attached, non-blocking tap fd with a 12-byte vnet header."""

    def __init__(self, fd: int, name: str, offloads: int) -> None:
        self.fd = fd
        self.name = name
        self.offloads = offloads      # TUN_F_* bits this tap accepted when probed

    @classmethod
    def open(cls, name: str, option: str = "-netdev netdev", tun_fd: int | None = None) -> Tap:
        """Attach to the existing tap ``name``; ``ConfigError`` naming ``option`` otherwise.

        ``tun_fd``: an unattached ``/dev/net/tun`` fd opened earlier (before the
        seccomp filter forbade opening files for writing); it is used up either way.
        """
        try:
            check_ifname(name, option)
            fd = tun_fd if tun_fd is not None else open_tun(option)
        except ConfigError:
            if tun_fd is not None:
                os.close(tun_fd)
            raise
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), TAP_FLAGS))
            _, flags = _IFREQ.unpack(_pad(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))))
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{option}: {_attach_error(name, exc)}") from None
        if not flags & IFF_PERSIST:
            os.close(fd)       # the tap we just created goes away with its only fd
            raise ConfigError(f"{option}: tap device {name!r} does not exist (create it first:"
                              f" ip tuntap add dev {name} mode tap)")
        return cls._ready(fd, name, option)

    @classmethod
    def from_fd(cls, fd: int, option: str = "netdev_add fds") -> Tap:
        """Adopt a tap fd someone else opened (QMP ``getfd``); it must be TAP, NO_PI, VNET_HDR.

        On success the Tap owns ``fd``; on failure the caller still does.
        """
        try:
            reply = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
        except OSError as exc:
            raise ConfigError(f"{option}: fd is not an attached tun/tap fd"
                              f" ({exc.strerror})") from None
        raw_name, flags = _IFREQ.unpack(_pad(reply))
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        missing = [label for bit, label in ((IFF_TAP, "IFF_TAP"), (IFF_NO_PI, "IFF_NO_PI"),
                                            (IFF_VNET_HDR, "IFF_VNET_HDR"))
                   if not flags & bit]
        if missing:
            raise ConfigError(f"{option}: tap fd for {name!r} was opened without"
                              f" {', '.join(missing)}")
        os.set_blocking(fd, False)
        return cls._ready(fd, name, option)

    @classmethod
    def _ready(cls, fd: int, name: str, option: str) -> Tap:
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            offloads = probe_offloads(fd)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{option}: tap {name!r}: cannot set the vnet header size:"
                              f" {exc.strerror}") from None
        return cls(fd, name, offloads)

    def set_offload(self, flags: int) -> None:
        """Let the host hand us frames with these ``TUN_F_*`` offloads (what the guest acked)."""
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def close(self) -> None:
        """Detach (a persistent tap stays; a passed fd's non-persistent tap goes away)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def detach_queues(tap: Tap, fds: list[int], option: str) -> None:
    """Close the other queues of a multi-queue tap whose first queue ``tap`` holds (QEMU's
    and StratoVirt 2.x's ``fds=A:B:...``, inherited from the parent).  The device serves
    one queue pair, and a multi-queue tap spreads received frames over its attached
    queues by flow, so a queue nobody reads would swallow frames: each other queue is
    detached (``TUNSETQUEUE`` with ``IFF_DETACH_QUEUE``, which leaves the tap steering
    every frame to the queues still attached) and its fd closed."""
    for fd in fds:
        try:
            raw_name, _flags = _IFREQ.unpack(_pad(fcntl.ioctl(fd, TUNGETIFF,
                                                              bytes(_IFREQ.size))))
        except OSError as exc:
            raise ConfigError(f"{option}: fd {fd} is not an attached tap fd"
                              f" ({exc.strerror})") from None
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        if name != tap.name:
            raise ConfigError(f"{option}: fd {fd} is a queue of tap {name!r}, not of"
                              f" {tap.name!r}")
        try:
            fcntl.ioctl(fd, TUNSETQUEUE, _IFREQ.pack(b"", IFF_DETACH_QUEUE))
        except OSError as exc:
            raise ConfigError(f"{option}: fd {fd}: tap {name!r} is not multi-queue, so it"
                              f" cannot have several fds ({exc.strerror})") from None
        os.close(fd)


def open_tun(option: str) -> int:
    """A fresh, unattached ``/dev/net/tun`` fd (non-blocking)."""
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot open {TUN_PATH}: {exc.strerror}") from None


def probe_offloads(fd: int) -> int:
    """The ``TUN_F_*`` bits the tap accepts (each combination tried), then none set."""
    accepted = 0
    for flags in _PROBES:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError:
            continue
        accepted |= flags
    fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    return accepted


def check_ifname(name: str, option: str) -> None:
    """A Linux interface name: 1..15 bytes, no '/', no whitespace, not '.' or '..'."""
    raw = name.encode()
    if (not raw or len(raw) >= IFNAMSIZ or name in (".", "..")
            or any(ch == "/" or ch.isspace() for ch in name)):
        raise ConfigError(f"{option}: {name!r} is not an interface name (1 to 15 bytes,"
                          " no '/' or spaces)")


def _attach_error(name: str, exc: OSError) -> str:
    import errno

    if exc.errno == errno.EINVAL:
        return f"{name!r} exists but is not a tap device"
    if exc.errno == errno.EBUSY:
        return f"tap {name!r} is already in use by another process"
    if exc.errno == errno.EPERM:
        return (f"cannot attach to tap {name!r}: permission denied (the tap must exist and"
                " belong to this user, or the VMM needs CAP_NET_ADMIN)")
    return f"cannot attach to tap {name!r}: {exc.strerror}"


def _pad(reply: bytes) -> bytes:
    return reply[: _IFREQ.size].ljust(_IFREQ.size, b"\0")
