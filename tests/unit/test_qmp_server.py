"""The QMP socket server on a real event loop (no KVM): clients, events, backpressure,
fds, shutdown."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from qemu.qmp.models import Greeting

from stratovmm import __version__
from stratovmm.devices.ratelimit import TokenBucket
from stratovmm.errors import ConfigError
from stratovmm.host.eventloop import EventLoop
from stratovmm.qmp import server as server_module
from stratovmm.qmp.commands import register_core_commands
from stratovmm.qmp.dispatch import Dispatcher
from stratovmm.qmp.events import Event
from stratovmm.qmp.server import QmpServer
from stratovmm.registry import QmpCommand, QmpRegistry
from stratovmm.testing.qmp import QmpTestClient


class FakeVm:
    state = "running"
    name = None

    def __init__(self) -> None:
        self.named_fds: dict[str, int] = {}

    def put_fd(self, name: str, fd: int) -> None:
        self.named_fds[name] = fd


class Served:
    """A server on a loop thread, and the path it listens on."""

    def __init__(self, path: str, vm: FakeVm, registry: QmpRegistry) -> None:
        self.path = path
        self.vm = vm
        self.loop = EventLoop("test-main")
        self.server = QmpServer(path, self.loop, Dispatcher(registry, cast(Any, vm),
                                                            TokenBucket(1e9)))
        self.server.start()
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def on_loop(self, fn: Any) -> Any:
        """Run ``fn()`` on the loop thread and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def call() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon(call)
        assert done.wait(10)
        return box[0]

    def client_count(self) -> int:
        return int(self.on_loop(lambda: len(self.server.clients)))

    def stop(self) -> None:
        self.on_loop(self.server.close)
        self.loop.stop()
        self.thread.join(10)
        self.loop.close()
        for fd in self.vm.named_fds.values():
            os.close(fd)


@pytest.fixture
def sockdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="qmp-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(sockdir: str) -> Iterator[Served]:
    registry = QmpRegistry()
    register_core_commands(registry)
    registry.add_command(QmpCommand(
        "echo", lambda _vm, args: args,
        {"type": "object", "additionalProperties": False,
         "properties": {"data": {"type": "string"}}}, returns={"type": "object"}))
    s = Served(os.path.join(sockdir, "qmp.sock"), FakeVm(), registry)
    yield s
    s.stop()


def test_greeting_is_the_binaries_qemu_layout_and_qemu_qmp_accepts_it(served: Served) -> None:
    """The greeting is what StratoVirt binaries send (a "qemu" version, 5.0.1 so that
    govmm's major >= 5 check passes) with our version in package; qemu.qmp parses it;
    query-version answers the same."""
    with QmpTestClient(served.path) as client:
        version = {"qemu": {"micro": 1, "minor": 0, "major": 5},
                   "package": f"StratoVMM-{__version__}"}
        assert client.greeting == {"QMP": {"version": version, "capabilities": []}}
        assert Greeting(client.greeting).QMP.version["qemu"]["major"] >= 5
        assert client.command("query-version")["return"] == version


def test_replies_are_single_crlf_lines(served: Served) -> None:
    """A reply is exactly one line ending in CR LF."""
    with QmpTestClient(served.path) as client:
        client.send_bytes(b'{"execute":"query-status","id":1}')
        line = client.read_line()
        assert line.endswith(b"\r\n") and b"\n" not in line[:-1]
        assert json.loads(line) == {"return": {"running": True, "singlestep": False,
                                               "status": "running"}, "id": 1}


def test_several_clients_and_events_to_each(served: Served) -> None:
    """Three clients are served at once and an event reaches every one of them."""
    clients = [QmpTestClient(served.path) for _ in range(3)]
    try:
        for i, client in enumerate(clients):
            assert client.command("echo", {"data": str(i)})["return"] == {"data": str(i)}
        served.server.publish(Event("STOP", {}, 1700000000.25))
        for client in clients:
            assert client.read_message() == {
                "event": "STOP", "data": {},
                "timestamp": {"seconds": 1700000000, "microseconds": 250000}}
    finally:
        for client in clients:
            client.close()


def test_connections_beyond_the_limit_are_refused(served: Served) -> None:
    """With MAX_CLIENTS connected, one more gets no greeting, only EOF; the others work."""
    clients = [QmpTestClient(served.path) for _ in range(server_module.MAX_CLIENTS)]
    try:
        extra = socket.socket(socket.AF_UNIX)
        extra.connect(served.path)
        extra.settimeout(5)
        assert extra.recv(100) == b""
        extra.close()
        assert all("return" in c.command("query-status") for c in clients)
    finally:
        for client in clients:
            client.close()


def test_client_that_does_not_read_is_throttled_not_buffered(served: Served,
                                                             monkeypatch: Any) -> None:
    """A client that sends thousands of commands without reading stops being read once its
    output backlog is high, then gets every reply in order when it reads."""
    request = b'{"execute":"echo","arguments":{"data":"' + b"x" * 200 + b'"},"id":%d}'
    count = 3000
    with QmpTestClient(served.path) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sender = threading.Thread(target=lambda: client.send_bytes(
            b"".join(request % i for i in range(count))))
        sender.start()
        time.sleep(1.0)

        def backlog() -> tuple[int, int]:
            c = next(iter(served.server.clients.values()))
            return len(c.out), len(c.pending)

        out, pending = served.on_loop(backlog)
        assert out <= server_module.OUTPUT_HIGH_WATER + 1024
        assert pending < count
        ids = [client.read_message()["id"] for _ in range(count)]
        sender.join(10)
        assert ids == list(range(count))


def test_client_that_never_reads_events_is_dropped(served: Served, monkeypatch: Any) -> None:
    """Events pile up only to OUTPUT_LIMIT; then the silent client is disconnected."""
    monkeypatch.setattr(server_module, "OUTPUT_LIMIT", 64 * 1024)
    client = QmpTestClient(served.path)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = {"blob": "y" * 1000}
    for _ in range(2000):
        served.server.publish(Event("DEMO", big))
    deadline = time.monotonic() + 10
    while served.client_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.client_count() == 0
    client.close()


def test_half_closed_client_still_gets_its_replies(served: Served) -> None:
    """After the client shuts down its sending side, every reply (even those still
    queued when the server saw end of input) arrives, then EOF."""
    request = b'{"execute":"echo","arguments":{"data":"' + b"z" * 200 + b'"},"id":%d}'
    with QmpTestClient(served.path) as client:
        client.command("query-status")
        served.on_loop(lambda: next(iter(served.server.clients.values())).sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))

        def send_then_half_close() -> None:
            client.send_bytes(b"".join(request % i for i in range(1000)) + b'{"execute":"s')
            client.sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_then_half_close)
        sender.start()
        assert [client.read_message()["id"] for _ in range(1000)] == list(range(1000))
        sender.join(10)
        assert client.read_eof(5)
    assert served.client_count() == 0


def test_disconnect_mid_command_harms_nothing(served: Served) -> None:
    """A client gone after half a command or before its reply leaves the server serving."""
    half = QmpTestClient(served.path)
    half.send_bytes(b'{"execute":"que')
    half.close()
    gone = QmpTestClient(served.path)
    gone.send_bytes(b'{"execute":"query-status"}' * 50)
    gone.close()
    with QmpTestClient(served.path) as client:
        assert "return" in client.command("query-status")
    deadline = time.monotonic() + 5
    while served.client_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.client_count() == 0


def test_getfd_with_fd_on_the_same_message(served: Served, sockdir: str) -> None:
    """An fd passed with SCM_RIGHTS in the getfd message is stored under fdname."""
    path = os.path.join(sockdir, "file")
    with open(path, "w") as f, QmpTestClient(served.path) as client:
        reply = client.command("getfd", {"fdname": "f0"}, fds=[f.fileno()])
        assert reply["return"] == {}
        stored = served.vm.named_fds["f0"]
        assert os.fstat(stored).st_ino == os.fstat(f.fileno()).st_ino
        assert stored != f.fileno()


def test_unclaimed_fds_are_closed_when_the_client_leaves(served: Served) -> None:
    """Fds a client passed but never named are closed when it disconnects."""
    r, w = os.pipe()
    client = QmpTestClient(served.path)
    client.send_bytes(b" ", fds=[w])
    assert "return" in client.command("query-status")
    os.close(w)
    client.close()
    deadline = time.monotonic() + 5
    while served.client_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.read(r, 1) == b""
    os.close(r)


def test_shutdown_event_is_flushed_then_server_closes(served: Served) -> None:
    """SHUTDOWN reaches clients, then they see EOF and the socket file is removed."""
    with QmpTestClient(served.path) as client:
        served.on_loop(lambda: served.server.publish(
            Event("SHUTDOWN", {"guest": False, "reason": "host-signal"})))
        event = client.read_message()
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert client.read_eof(5)
    assert not os.path.exists(served.path)


def test_stale_socket_is_replaced_live_one_refused(sockdir: str) -> None:
    """A socket file nobody listens on is replaced; a live one or a plain file is refused."""
    path = os.path.join(sockdir, "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    loop = EventLoop("t")
    registry = QmpRegistry()
    first = QmpServer(path, loop, Dispatcher(registry, cast(Any, FakeVm())))
    first.start()
    with pytest.raises(ConfigError, match="another process is listening there"):
        QmpServer(path, loop, Dispatcher(registry, cast(Any, FakeVm()))).start()
    first.close()
    assert not os.path.exists(path)
    with open(path, "w"):
        pass
    with pytest.raises(ConfigError, match="not a socket"):
        QmpServer(path, loop, Dispatcher(registry, cast(Any, FakeVm()))).start()
    loop.close()
