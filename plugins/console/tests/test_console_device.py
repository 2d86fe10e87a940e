"""virtio-console port 0 (virtio 1.2 §5.3) and its unix socket, through the real transport,
no KVM."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from stratovmm_console.backend import ConsoleSocket
from stratovmm_console.device import (
    F_EMERG_WRITE,
    F_MULTIPORT,
    F_SIZE,
    RECEIVEQ,
    TRANSMITQ,
    ConsoleDevice,
)

from stratovmm.api import SERVE_BUDGET, ConfigError, EventLoop
from stratovmm.testing import spec as c
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer, MockSplitQueue

CAPACITY = 64      # a small output buffer so overflow is cheap to provoke


class Console:
    """A started device, its socket path and the clients a test opened."""

    def __init__(self, tmp_path: Path, capacity: int = CAPACITY) -> None:
        self.path = str(tmp_path / "c.sock")
        loop = EventLoop("console-test")
        self.port = ConsoleSocket(self.path, loop, capacity=capacity)
        self.device = ConsoleDevice("con0", self.port)
        self.h = DeviceHarness(self.device, queue_size=16, loop=loop)
        self.h.start()
        self.clients: list[socket.socket] = []

    @property
    def rxq(self) -> MockSplitQueue:
        return self.h.queues[RECEIVEQ]

    @property
    def txq(self) -> MockSplitQueue:
        return self.h.queues[TRANSMITQ]

    def run(self, turns: int = 3) -> None:
        for _ in range(turns):
            self.h.run()

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(self.path)
        client.settimeout(2)
        self.clients.append(client)
        self.run()
        return client

    def guest_writes(self, data: bytes) -> int:
        """Post ``data`` on the transmitq and kick; returns the chain's head."""
        addr = self.h.alloc(len(data))
        self.h.memory.write(addr, data)
        head = self.txq.add_chain([Buffer(addr, len(data))])
        self.h.kick(TRANSMITQ)
        return head

    def guest_posts(self, count: int, size: int) -> list[int]:
        """Post ``count`` receive buffers of ``size`` bytes and kick; returns their addresses."""
        addrs = []
        for _ in range(count):
            addr = self.h.alloc(size)
            self.rxq.add_chain([Buffer(addr, size, True)])
            addrs.append(addr)
        self.h.kick(RECEIVEQ)
        return addrs

    def client_watched_for_input(self) -> bool:
        """Whether the loop would wake for the connected client's input right now."""
        client = self.port._client
        assert client is not None
        return client.fileno() in self.h.loop.ready()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.device.close()


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Console]:
    console = Console(tmp_path)
    yield console
    console.close()


def recv_exactly(client: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = client.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


# -- device identity (§5.3.1-§5.3.4) --------------------------------------------------------------


def test_identity_features_and_config(con: Console) -> None:
    """Device id 3, two queues, no MULTIPORT/SIZE/EMERG_WRITE, config says one port."""
    assert con.h.read_reg(c.DEVICE_ID) == c.ID_CONSOLE
    features = con.h.device_features()
    for bit in (F_SIZE, F_MULTIPORT, F_EMERG_WRITE):
        assert not features & (1 << bit)
    assert struct.unpack("<HHII", con.h.read_config(0, 12)) == (0, 0, 1, 0)


# -- guest output ----------------------------------------------------------------------------------


def test_guest_output_reaches_the_client(con: Console) -> None:
    """Bytes on the transmitq arrive on the socket; the buffer comes back with length 0."""
    client = con.connect()
    head = con.guest_writes(b"hello from the guest\n")
    assert con.txq.used_elements() == [(head, 0)]
    assert recv_exactly(client, 21) == b"hello from the guest\n"
    assert con.device.stats()["bytes_written"] == 21
    assert con.h.interrupts >= 1


def test_output_is_buffered_while_no_client_and_delivered_on_connect(con: Console) -> None:
    """Output written with nobody connected is kept, the buffer returned at once, and the
    next client receives it first."""
    head = con.guest_writes(b"early boot log\n")
    assert con.txq.used_elements() == [(head, 0)]
    assert con.device.stats()["output_buffered"] == 15
    client = con.connect()
    con.guest_writes(b"later\n")
    assert recv_exactly(client, 21) == b"early boot log\nlater\n"
    assert con.device.stats()["output_buffered"] == 0


def test_output_buffer_is_bounded_oldest_dropped_and_counted(con: Console) -> None:
    """Beyond the buffer's capacity the oldest bytes go, counted in output_dropped."""
    data = bytes(range(100))
    con.guest_writes(data[:50])
    con.guest_writes(data[50:])
    stats = con.device.stats()
    assert stats["output_buffered"] == CAPACITY
    assert stats["output_dropped"] == 100 - CAPACITY
    client = con.connect()
    assert recv_exactly(client, CAPACITY) == data[-CAPACITY:]


def test_a_chain_larger_than_the_buffer_keeps_only_its_tail(con: Console) -> None:
    """One huge transmit buffer costs at most the buffer's capacity on the host."""
    data = bytes(i % 251 for i in range(10_000))
    con.guest_writes(data)
    assert con.device.stats()["output_dropped"] == 10_000 - CAPACITY
    client = con.connect()
    assert recv_exactly(client, CAPACITY) == data[-CAPACITY:]


def test_a_client_that_does_not_read_never_stalls_the_guest(tmp_path: Path) -> None:
    """With a connected client that reads nothing, every transmit buffer still comes back at
    once (Linux spins until it does); what the socket cannot take is bounded and counted."""
    con = Console(tmp_path, capacity=4096)
    try:
        con.connect()
        chunk = b"x" * 4096
        for _ in range(200):                      # 800 KiB: far beyond the socket buffer
            head = con.guest_writes(chunk)
            assert con.txq.used_elements() == [(head, 0)]
        stats = con.device.stats()
        assert stats["output_buffered"] <= 4096
        assert stats["output_dropped"] > 0
        assert stats["bytes_written"] == 200 * 4096
    finally:
        con.close()


def test_a_client_that_goes_away_harms_nothing(con: Console) -> None:
    """After a client disconnects, output is buffered again and the next client gets it."""
    first = con.connect()
    con.guest_writes(b"one\n")
    assert recv_exactly(first, 4) == b"one\n"
    first.close()
    con.run()
    assert not con.port.connected
    head = con.guest_writes(b"two\n")
    assert con.txq.used_elements()[-1] == (head, 0)
    second = con.connect()
    assert recv_exactly(second, 4) == b"two\n"
    assert con.device.stats()["guest_faults"] == 0


def test_a_client_that_vanishes_mid_write_keeps_the_rest_buffered(tmp_path: Path) -> None:
    """A write that fails because the client is gone (EPIPE) drops the client, not the data."""
    con = Console(tmp_path, capacity=4096)
    try:
        client = con.connect()
        client.close()                  # the loop has not seen the hang-up yet
        con.guest_writes(b"still here\n")
        assert not con.port.connected
        assert recv_exactly(con.connect(), 11) == b"still here\n"
    finally:
        con.close()


def test_a_new_client_replaces_the_old_one(con: Console) -> None:
    """One client at a time, newest wins: the previous one sees EOF, output goes to the new."""
    first = con.connect()
    second = con.connect()
    assert first.recv(16) == b""
    con.guest_writes(b"to the newest\n")
    assert recv_exactly(second, 14) == b"to the newest\n"
    stats = con.device.stats()
    assert (stats["connections"], stats["disconnections"], stats["accept_errors"]) == (2, 1, 0)


def test_a_half_closed_client_still_receives_output(con: Console) -> None:
    """A client that shut down its sending side keeps getting the guest's output."""
    client = con.connect()
    client.shutdown(socket.SHUT_WR)
    con.guest_posts(1, 16)
    con.run()
    con.guest_writes(b"still talking\n")
    assert recv_exactly(client, 14) == b"still talking\n"


# -- guest input -----------------------------------------------------------------------------------


def test_client_input_fills_receive_buffers_in_order(con: Console) -> None:
    """Bytes from the client land in the receive buffers in order, used length = bytes."""
    addrs = con.guest_posts(3, 8)
    client = con.connect()
    before = con.h.interrupts
    client.sendall(b"0123456789")
    con.run()
    used = con.rxq.used_elements()
    assert [length for _head, length in used] == [8, 2]
    assert con.h.memory.read(addrs[0], 8) + con.h.memory.read(addrs[1], 2) == b"0123456789"
    assert con.h.interrupts > before
    assert con.device.stats()["bytes_read"] == 10


def test_input_waits_in_the_socket_when_the_guest_has_no_buffers(con: Console) -> None:
    """With no receive buffer the socket is not read nor watched (no busy loop); buffers
    posted later receive the waiting bytes intact."""
    client = con.connect()
    client.sendall(b"typed ahead\n")
    con.run()
    assert con.rxq.used_elements() == []
    assert not con.client_watched_for_input()
    addr = con.guest_posts(1, 64)[0]
    con.run()
    assert con.rxq.used_elements()[0][1] == 12
    assert con.h.memory.read(addr, 12) == b"typed ahead\n"


def test_input_stops_when_buffers_run_out_and_resumes_on_kick(con: Console) -> None:
    """More input than buffers: the guest's buffers fill, the rest waits until it posts more."""
    con.guest_posts(2, 4)
    client = con.connect()
    client.sendall(b"abcdefghij")
    con.run()
    assert [n for _h, n in con.rxq.used_elements()] == [4, 4]
    assert not con.client_watched_for_input()
    addr = con.guest_posts(1, 4)[0]
    con.run()
    assert [n for _h, n in con.rxq.used_elements()] == [2]
    assert con.h.memory.read(addr, 2) == b"ij"


def test_one_loop_turn_fills_at_most_a_batch(tmp_path: Path) -> None:
    """A flood of input fills SERVE_BUDGET buffers per loop turn, then yields to other
    devices."""
    con = Console(tmp_path)
    con.h.queue_size = 128
    con.h.start()                                 # re-negotiate with 128-entry queues
    try:
        client = con.connect()
        con.guest_posts(SERVE_BUDGET + 10, 1)
        client.sendall(b"z" * (SERVE_BUDGET + 10))
        con.h.run()
        assert len(con.rxq.used_elements()) == SERVE_BUDGET
        con.h.run()
        assert len(con.rxq.used_elements()) == 10
    finally:
        con.close()


def test_input_before_the_driver_is_ready_waits(tmp_path: Path) -> None:
    """Before DRIVER_OK nothing is read; after it, the buffers get the bytes."""
    path = str(tmp_path / "c.sock")
    loop = EventLoop("console-test")
    port = ConsoleSocket(path, loop)
    h = DeviceHarness(ConsoleDevice("con0", port), loop=loop)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    h.run()
    client.sendall(b"hi")
    h.run()
    assert port.connected
    h.start()
    addr = h.alloc(8)
    h.queues[RECEIVEQ].add_chain([Buffer(addr, 8, True)])
    h.kick(RECEIVEQ)
    h.run()
    assert h.queues[RECEIVEQ].used_elements()[0][1] == 2
    assert h.memory.read(addr, 2) == b"hi"
    client.close()
    port.close()


def test_reset_forgets_the_held_buffer_and_stops_reading(con: Console) -> None:
    """A driver reset drops the buffer held for input; input is not read afterwards."""
    con.guest_posts(1, 8)
    client = con.connect()
    assert con.device.held_chains(RECEIVEQ) == 1
    con.h.write_reg(c.STATUS, 0)
    assert con.device.held_chains(RECEIVEQ) == 0
    client.sendall(b"lost?")
    con.run()
    assert not con.client_watched_for_input()


# -- bad guest input (§5.3.6.1, §2.7) --------------------------------------------------------------


def test_transmit_chain_with_writable_buffer_is_refused_and_counted(con: Console) -> None:
    """§5.3.6.1: a device-writable buffer in the transmitq is a guest fault; nothing is sent."""
    con.connect()
    addr = con.h.alloc(8)
    con.h.memory.write(addr, b"sneaky!!")
    head = con.txq.add_chain([Buffer(addr, 8), Buffer(con.h.alloc(8), 8, True)])
    con.h.kick(TRANSMITQ)
    assert con.txq.used_elements() == [(head, 0)]
    assert con.device.stats()["guest_faults"] == 1
    assert con.device.stats()["bytes_written"] == 0


def test_receive_chain_with_readable_buffer_is_refused_and_counted(con: Console) -> None:
    """§5.3.6.1: a device-readable buffer in the receiveq is completed empty and counted; the
    next good buffer still gets the input."""
    client = con.connect()
    bad = con.rxq.add_chain([Buffer(con.h.alloc(8), 8), Buffer(con.h.alloc(8), 8, True)])
    good = con.h.alloc(8)
    con.rxq.add_chain([Buffer(good, 8, True)])
    con.h.kick(RECEIVEQ)
    client.sendall(b"ok")
    con.run()
    used = con.rxq.used_elements()
    assert used[0] == (bad, 0)
    assert used[1][1] == 2 and con.h.memory.read(good, 2) == b"ok"
    assert con.device.stats()["guest_faults"] == 1


@pytest.mark.parametrize("queue", [RECEIVEQ, TRANSMITQ])
def test_chain_outside_guest_ram_is_completed_empty_and_counted(con: Console, queue: int) -> None:
    """A descriptor pointing past guest RAM is a bad chain (§2.7.5): length 0, counted."""
    q = con.h.queues[queue]
    flags = c.DESC_F_WRITE if queue == RECEIVEQ else 0
    q.write_descriptor(0, con.h.memory.size - 4, 64, flags)
    q.publish(0)
    con.h.kick(queue)
    con.run()
    assert q.used_elements() == [(0, 0)]
    assert con.device.stats()["guest_faults"] == 1


def test_broken_receive_ring_needs_reset_and_stops_reading(con: Console) -> None:
    """An avail index far ahead of the device (§2.7.13.3) sets DEVICE_NEEDS_RESET; the socket
    is no longer read, so nothing spins."""
    client = con.connect()
    con.h.memory.write_u16(con.rxq.avail_ring + 2, 1000)
    con.h.kick(RECEIVEQ)
    client.sendall(b"x")
    con.run()
    assert con.h.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET
    assert not con.client_watched_for_input()


# -- the socket file -------------------------------------------------------------------------------


def test_socket_is_owner_only_and_removed_at_close(tmp_path: Path) -> None:
    """The socket file is created 0600 and removed when the device closes."""
    path = tmp_path / "c.sock"
    port = ConsoleSocket(str(path), EventLoop("t"))
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    port.close()
    assert not path.exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    """A socket file left by an earlier run is replaced by a live one."""
    path = tmp_path / "c.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()                                  # the file stays, nobody listens
    port = ConsoleSocket(str(path), EventLoop("t"))
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    client.close()
    port.close()


def test_close_leaves_a_socket_that_is_no_longer_ours(tmp_path: Path) -> None:
    """If another process replaced the socket file, closing does not delete theirs."""
    path = tmp_path / "c.sock"
    port = ConsoleSocket(str(path), EventLoop("t"))
    path.unlink()
    theirs = socket.socket(socket.AF_UNIX)
    theirs.bind(str(path))
    port.close()
    assert path.exists()
    theirs.close()


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "missing" / "c.sock", "does not exist"),
    (lambda p: p, "is a directory"),
    (lambda p: (p / "f").write_text("keep") and p / "f", "not a socket"),
    (lambda p: p / ("x" * 120), "longer than 107 bytes"),
])
def test_unusable_paths_are_config_errors(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    """A path that cannot become a socket is a clear error naming the option; a regular file
    there is never deleted."""
    path = make(tmp_path)
    with pytest.raises(ConfigError, match="-chardev path") as info:
        ConsoleSocket(str(path), EventLoop("t"))
    assert needle in str(info.value)
    if (tmp_path / "f").exists():
        assert (tmp_path / "f").read_text() == "keep"


def test_bind_failure_is_a_config_error(tmp_path: Path) -> None:
    """A directory where bind() fails even for root (sysfs) gives the OS reason."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs")
    with pytest.raises(ConfigError, match=r"-chardev path.*/sys/kernel/c\.sock"):
        ConsoleSocket("/sys/kernel/c.sock", EventLoop("t"))


def test_broken_transmit_ring_stops_input_watching(con: Console) -> None:
    """After a broken transmitq stops the device, pending client input does not keep the loop
    busy: the socket is no longer watched for input."""
    con.guest_posts(1, 8)
    client = con.connect()
    con.h.memory.write_u16(con.txq.avail_ring + 2, 1000)
    con.h.kick(TRANSMITQ)
    assert con.h.read_reg(c.STATUS) & c.STATUS_DEVICE_NEEDS_RESET
    client.sendall(b"x")
    con.run()
    assert not con.client_watched_for_input()
    assert con.rxq.used_elements() == []
