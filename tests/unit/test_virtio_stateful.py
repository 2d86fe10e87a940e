"""Stateful property tests: a hostile guest driver (``virtio_stateful.VirtioGuest``) drives
each virtio device — blk, net, console, vsock, rng, balloon — through the real virtio-mmio
transport, with the device's real host backend and the host side doing its part.  The
invariants are in ``virtio_stateful``: no write past guest RAM, no exception at the vCPU or
event-loop boundary, bounded host memory, every chain returned (or held on purpose, or
DEVICE_NEEDS_RESET), no RAM writes after a reset.  ``STRATOVMM_FUZZ_EXAMPLES`` raises the
example count for a long run."""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from virtio_stateful import RAM, VirtioGuest, settings_for

from stratovmm.virtio.device import VirtioDevice

Request = list[tuple[bytes, int, bool]]
IMAGE = bytes(i % 251 for i in range(64 * 512))   # built once: a long run makes thousands


def connect(path: str) -> socket.socket:
    """A non-blocking client of the unix socket at ``path`` (a full backlog, as when the
    device's loop has not run to accept, leaves it unconnected instead of blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError, InterruptedError):
        sock.connect(path)
    return sock


# -- blk: a temporary image, direct=on or off -----------------------------------------------------


class BlkGuest(VirtioGuest):
    """virtio-blk on a 64-sector image (O_DIRECT or not): reads, writes, flushes, get-id,
    unknown types, short headers, missing status bytes."""

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_blk.backend import BlockBackend
        from stratovmm_blk.device import BlockDevice

        path = os.path.join(self.tmp, "disk.img")
        with open(path, "wb") as f:
            f.write(IMAGE)
        direct = data.draw(st.booleans(), label="direct")
        read_only = data.draw(st.booleans(), label="read_only")
        iops = data.draw(st.sampled_from([None, 50]), label="iops")
        return BlockDevice("blk0", BlockBackend(path, read_only, direct), "SERIAL", self.loop,
                           iops)

    def request(self, data: st.DataObject, queue: int) -> Request:
        kind = data.draw(st.sampled_from([0, 1, 4, 8, 99]), label="type")
        sector = data.draw(st.one_of(st.integers(0, 70), st.just(2**63)), label="sector")
        header = struct.pack("<IIQ", kind, 0, sector)
        size = data.draw(st.sampled_from([0, 512, 1024, 100, 4096]), label="data")
        parts = data.draw(st.integers(1, 3), label="pieces")
        pieces = [(b"\x5a" * (size // parts), size // parts, kind != 1)] * (parts if size else 0)
        header_len = data.draw(st.sampled_from([16, 16, 8]), label="header length")
        status = [(b"\xee", 1, True)] if data.draw(st.booleans(), label="status") else []
        return [(header, header_len, False), *pieces, *status]

    def host_bytes(self) -> int:
        from stratovmm_blk.backend import BOUNCE_CHUNK

        backend = getattr(self.device, "backend", None)
        bounce = getattr(backend, "_bounce", None)
        assert bounce is None or len(bounce) == BOUNCE_CHUNK
        return BOUNCE_CHUNK if bounce is not None else 0


# -- net: a datagram socketpair stands in for the tap ---------------------------------------------


class NetGuest(VirtioGuest):
    """virtio-net with a SOCK_DGRAM socketpair as its tap fd (one frame per read/write, as
    a tap): the host peer sends frames (tiny, huge, garbage) and drains what the guest
    sends."""

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_net.device import NetDevice
        from stratovmm_net.tap import Tap

        class SocketTap(Tap):
            """A socketpair end as the tap fd; TUNSETOFFLOAD (a tap ioctl) is recorded."""

            def set_offload(self, flags: int) -> None:
                self.offload = flags

        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self.peer.setblocking(False)
        tap = SocketTap(ours.detach(), "sp0", 0x1F)      # the device closes the fd
        return NetDevice("net0", tap, bytes.fromhex("525400123456"), self.loop)

    def request(self, data: st.DataObject, queue: int) -> Request:
        if queue == 0:                                   # receiveq: writable buffers
            sizes = data.draw(st.lists(st.sampled_from([1, 12, 64, 1526, 4096]), min_size=1,
                                       max_size=4), label="rx buffers")
            return [(b"", n, True) for n in sizes]
        header = struct.pack("<BBHHHHH", *data.draw(st.tuples(
            st.sampled_from([0, 1, 2]), st.sampled_from([0, 1, 3, 4, 0x81, 7]),
            st.integers(0, 100), st.integers(0, 1500), st.integers(0, 100),
            st.integers(0, 100), st.integers(0, 3)), label="vnet header"))
        frame = data.draw(st.binary(min_size=0, max_size=200), label="frame")
        return [(header + frame, len(header) + len(frame), False)]

    @precondition(lambda self: self.device is not None)
    @rule(frame=st.one_of(st.binary(max_size=100), st.integers(14, 9000).map(bytes)))
    def host_sends_frame(self, frame: bytes) -> None:
        """The tap hands the device a frame (vnet header + Ethernet, or garbage)."""
        with contextlib.suppress(BlockingIOError):
            self.peer.send(bytes(12) + frame)

    @precondition(lambda self: self.device is not None)
    @rule()
    def host_drains(self) -> None:
        """The host stack takes what the guest sent."""
        with contextlib.suppress(BlockingIOError):
            while self.peer.recv(70000):
                pass

    def host_bytes(self) -> int:
        from stratovmm_net.device import MAX_PACKET

        spill = self.device._spill  # type: ignore[attr-defined]
        assert spill is None or len(spill.tail) <= MAX_PACKET
        return len(spill.tail) if spill is not None else 0

    def close_backend(self) -> None:
        self.peer.close()


# -- console: its unix socket server, with a real client ------------------------------------------


class ConsoleGuest(VirtioGuest):
    """virtio-console on its real unix socket: a host client comes and goes, types input and
    reads (or does not read) the guest's output."""

    HOST_BYTES_MAX = 64 * 1024

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_console.backend import ConsoleSocket
        from stratovmm_console.device import ConsoleDevice

        self.path = os.path.join(self.tmp, "con.sock")
        self.client: socket.socket | None = None
        return ConsoleDevice("con0", ConsoleSocket(self.path, self.loop))

    def request(self, data: st.DataObject, queue: int) -> Request:
        sizes = data.draw(st.lists(st.sampled_from([0, 1, 7, 512, 4096]), min_size=1,
                                   max_size=3), label="buffers")
        return [(b"\x41" * n, n, queue == 0) for n in sizes]

    @precondition(lambda self: self.device is not None)
    @rule(data=st.binary(max_size=300), leave=st.booleans())
    def host_client(self, data: bytes, leave: bool) -> None:
        """A client connects (replacing the last one), types ``data``, maybe leaves."""
        if self.client is None:
            self.client = connect(self.path)
        with contextlib.suppress(OSError):
            self.client.send(data)
        if leave:
            self.client.close()
            self.client = None

    def host_bytes(self) -> int:
        return self.device.port.buffered  # type: ignore[attr-defined, no-any-return]

    def close_backend(self) -> None:
        if self.client is not None:
            self.client.close()


# -- vsock: the unix-socket bridge, with host peers --------------------------------------------


class VsockGuest(VirtioGuest):
    """virtio-vsock on its real unix-socket bridge: host processes connect (CONNECT lines,
    good and bad) and listen for the guest; the guest sends any packet."""

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_vsock.backend import UnixBridge
        from stratovmm_vsock.device import VsockDevice

        self.path = os.path.join(self.tmp, "v.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(f"{self.path}_5000")
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.hosts: list[socket.socket] = []
        return VsockDevice("vsock0", 3, UnixBridge(self.path, 3, self.loop))

    def request(self, data: st.DataObject, queue: int) -> Request:
        if queue != 1:                                   # rx and event: writable buffers
            n = data.draw(st.sampled_from([8, 44, 60, 4096]), label="rx buffer")
            return [(b"", n, True)]
        op = data.draw(st.integers(0, 8), label="op")
        payload = data.draw(st.binary(max_size=64), label="payload")
        header = struct.pack("<QQIIIHHIII", data.draw(st.sampled_from([3, 3, 2, 7])), 2,
                             data.draw(st.sampled_from([1234, 1235])),
                             data.draw(st.sampled_from([5000, 5001, 1 << 30])),
                             data.draw(st.sampled_from([len(payload), 0, 1 << 20])),
                             data.draw(st.sampled_from([1, 1, 2])), op,
                             data.draw(st.integers(0, 3)), data.draw(st.sampled_from(
                                 [0, 4096, 1 << 20])), data.draw(st.integers(0, 4096)))
        return [(header, len(header), False)] + ([(payload, len(payload), False)]
                                                 if payload else [])

    @precondition(lambda self: self.device is not None)
    @rule(line=st.sampled_from([b"CONNECT 1234\n", b"CONNECT 99\n", b"CONNECT x\n", b"C" * 40]),
          data=st.binary(max_size=100))
    def host_connects(self, line: bytes, data: bytes) -> None:
        """A host process connects to the bridge, asks for a guest port, sends data."""
        if len(self.hosts) >= 4:
            self.hosts.pop(0).close()
        sock = connect(self.path)
        with contextlib.suppress(OSError):
            sock.send(line + data)
        self.hosts.append(sock)

    @precondition(lambda self: self.device is not None)
    @rule(data=st.binary(max_size=100), close=st.booleans())
    def host_peers_talk(self, data: bytes, close: bool) -> None:
        """The host service at PATH_5000 accepts the guest's streams, writes, reads, hangs up."""
        with contextlib.suppress(BlockingIOError):
            conn, _ = self.listener.accept()
            conn.setblocking(False)
            self.hosts.append(conn)
        for sock in list(self.hosts):
            with contextlib.suppress(BlockingIOError, ConnectionError, OSError):
                sock.send(data)
                sock.recv(4096)
        if close and self.hosts:
            self.hosts.pop().close()

    def host_bytes(self) -> int:
        from stratovmm_vsock.backend import MAX_CONNECTIONS, MAX_PENDING_RST

        bridge = self.device.bridge  # type: ignore[attr-defined]
        assert len(bridge.conns) + len(bridge.clients) <= MAX_CONNECTIONS
        assert len(bridge._rst) <= MAX_PENDING_RST + 1
        return sum(len(conn.out) for conn in bridge.conns.values())  # type: ignore[no-any-return]

    def close_backend(self) -> None:
        for sock in self.hosts:
            sock.close()
        self.listener.close()


# -- rng: an entropy file, rate-limited or not -----------------------------------------------------


class RngGuest(VirtioGuest):
    """virtio-rng on a file, with or without bytes_per_sec."""

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_rng.device import RngDevice

        path = os.path.join(self.tmp, "entropy")
        with open(path, "wb") as f:
            f.write(os.urandom(1024))
        rate = data.draw(st.sampled_from([None, 64, 100000]), label="bytes_per_sec")
        return RngDevice("rng0", path, self.loop, rate)

    def request(self, data: st.DataObject, queue: int) -> Request:
        sizes = data.draw(st.lists(st.sampled_from([0, 1, 16, 4096, 70000]), min_size=1,
                                   max_size=3), label="buffers")
        readable = data.draw(st.booleans(), label="readable first")
        return ([(b"x", 1, False)] if readable else []) + [(b"", n, True) for n in sizes]


# -- balloon: real page discards on the test RAM --------------------------------------------------


class BalloonGuest(VirtioGuest):
    """virtio-balloon on the test RAM (inflating zeroes the pages): page numbers in and out
    of RAM, ragged arrays, QMP targets changing meanwhile."""

    def make_device(self, data: st.DataObject) -> VirtioDevice:
        from stratovmm_balloon.device import BalloonDevice

        self.changes: list[int] = []
        return BalloonDevice("balloon0", RAM, self.loop, data.draw(st.booleans()),
                             self.changes.append)

    def request(self, data: st.DataObject, queue: int) -> Request:
        pfns = data.draw(st.lists(st.one_of(st.integers(0, RAM >> 12), st.integers(0, 2**32 - 1)),
                                  max_size=300), label="pfns")
        raw = struct.pack(f"<{len(pfns)}I", *pfns)
        ragged = data.draw(st.integers(0, 3), label="ragged bytes")
        return [(raw + bytes(ragged), len(raw) + ragged, False)]

    @precondition(lambda self: self.device is not None)
    @rule(pages=st.integers(0, RAM >> 12))
    def qmp_balloon(self, pages: int) -> None:
        """QMP ``balloon``: a new target (the driver hears of it by a config interrupt)."""
        self.device.request_target(pages)  # type: ignore[attr-defined]


TestBlk = settings_for(BlkGuest)
TestNet = settings_for(NetGuest)
TestConsole = settings_for(ConsoleGuest)
TestVsock = settings_for(VsockGuest)
TestRng = settings_for(RngGuest)
TestBalloon = settings_for(BalloonGuest)
