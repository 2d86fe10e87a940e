"""QMP lifecycle on a running VM: stop/cont with events, -freeze, -name, getfd, quit,
host signals, introspection of plugin commands."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qmp_vm import VmProcess, build_loop_guest, loop_guest_args

from stratovmm.cli import core_registry
from stratovmm.plugin import PluginHost
from stratovmm.registry import Registry


@pytest.fixture(scope="module")
def kernel(kvm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_loop_guest(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def vm(kernel: Path) -> Iterator[VmProcess]:
    process = VmProcess(loop_guest_args(kernel, "-name", "qmp-test-vm"))
    yield process
    process.close()


def assert_timestamp(event: dict[str, object]) -> None:
    stamp = event["timestamp"]
    assert isinstance(stamp, dict)
    assert abs(stamp["seconds"] - time.time()) < 60
    assert 0 <= stamp["microseconds"] < 1_000_000


def test_stop_and_cont_with_events_to_every_client(vm: VmProcess) -> None:
    """stop pauses (STOP with data {} to both clients, status paused), cont resumes (RESUME,
    running); as in StratoVirt v0.3, stop while paused and cont while running are
    GenericError and send no event."""
    with vm.client() as a, vm.client() as b:
        assert vm.wait_stdout("READY")
        refused = a.command("cont")
        assert refused["error"] == {"class": "GenericError",
                                    "desc": "cont: the VM is running, not paused"}
        assert a.events == []       # an event would have come before the reply
        assert a.command("stop") == {"return": {}, "id": 2}
        assert a.command("query-status")["return"] == {"running": False, "singlestep": False,
                                                       "status": "paused"}
        for client in (a, b):
            stop = client.wait_event("STOP", 5)
            assert_timestamp(stop)
            assert stop["data"] == {}
        assert a.command("stop")["error"]["class"] == "GenericError"
        assert a.events == []
        assert a.command("cont")["return"] == {}
        for client in (a, b):
            resume = client.wait_event("RESUME", 5)
            assert_timestamp(resume)
            assert resume["data"] == {}
        assert a.command("query-status")["return"]["status"] == "running"
        assert a.command("cont")["error"]["class"] == "GenericError"
        assert a.events == []


@pytest.mark.parametrize("flag", ["-freeze", "-S"])
def test_frozen_vm_is_paused_until_cont(kernel: Path, flag: str) -> None:
    """With -freeze (or -S) the guest runs no instruction before cont: query-status says
    paused (StratoVirt v0.3 starts a frozen VM paused), stop is refused; cont starts it
    (RESUME); a second -S VM quits while still frozen, with SHUTDOWN and exit status 0."""
    vm = VmProcess(loop_guest_args(kernel, flag))
    try:
        with vm.client() as client:
            assert client.command("query-status")["return"] == {
                "running": False, "singlestep": False, "status": "paused"}
            assert not vm.wait_stdout("READY", 1.0)
            assert client.command("stop")["error"]["desc"] == "stop: the VM is paused, not running"
            assert client.command("cont")["return"] == {}
            assert client.wait_event("RESUME", 5)["data"] == {}
            assert vm.wait_stdout("READY", 10)
            assert client.command("query-status")["return"]["status"] == "running"
            assert client.command("quit")["return"] == {}
        assert vm.wait() == 0
    finally:
        vm.close()
    frozen = VmProcess(loop_guest_args(kernel, flag))
    try:
        with frozen.client() as client:
            assert client.command("quit")["return"] == {}
            assert client.wait_event("SHUTDOWN", 5)["data"] == {"guest": False,
                                                                "reason": "host-qmp-quit"}
        assert frozen.wait() == 0
        assert "READY" not in frozen.stdout
    finally:
        frozen.close()


def test_quit_while_paused(vm: VmProcess) -> None:
    """A stopped VM answers query-status paused and quits as a running one does:
    SHUTDOWN host-qmp-quit and exit status 0 (v0.3's destroy() from any state)."""
    with vm.client() as client:
        assert vm.wait_stdout("READY")
        assert client.command("stop")["return"] == {}
        assert client.command("query-status")["return"]["status"] == "paused"
        assert client.command("quit")["return"] == {}
        assert client.wait_event("SHUTDOWN", 5)["data"] == {"guest": False,
                                                            "reason": "host-qmp-quit"}
    assert vm.wait() == 0


def test_query_name(vm: VmProcess) -> None:
    """-name is what query-name answers."""
    with vm.client() as client:
        assert client.command("query-name")["return"] == {"name": "qmp-test-vm"}


def test_quit_replies_then_shutdown_event_then_exit_0(vm: VmProcess) -> None:
    """quit: the reply, then SHUTDOWN (host-qmp-quit), EOF, exit 0, socket file gone."""
    with vm.client() as other, vm.client() as client:
        client.send_bytes(b'{"execute":"quit","id":"bye"}')
        assert client.read_message() == {"return": {}, "id": "bye"}
        for c in (client, other):
            event = c.wait_event("SHUTDOWN", 5)
            assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
            assert_timestamp(event)
            assert c.read_eof(5)
    assert vm.wait() == 0
    assert not os.path.exists(vm.socket_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_host_signal_sends_shutdown_and_exits_0(vm: VmProcess, signum: int) -> None:
    """SIGTERM/SIGINT: connected clients get SHUTDOWN (host-signal), the VMM exits 0."""
    with vm.client() as client:
        assert vm.wait_stdout("READY")
        client.command("query-status")
        vm.proc.send_signal(signum)
        event = client.wait_event("SHUTDOWN", 10)
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert client.read_eof(5)
    assert vm.wait() == 0


def test_shutdown_reaches_a_client_with_unread_output(vm: VmProcess) -> None:
    """A client that left replies unread still gets SHUTDOWN (the server flushes before
    the process exits, within the seccomp filter) and the VMM exits 0."""
    with vm.client() as client:
        assert vm.wait_stdout("READY")
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.send_bytes(b'{"execute":"query-qmp-schema"}' * 90)
        time.sleep(1.0)
        vm.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        messages = []
        with contextlib.suppress(EOFError):
            while True:
                messages.append(client.read_message(10))
        assert len(messages) > 1
        assert messages[-1]["event"] == "SHUTDOWN"
        assert messages[-1]["data"]["reason"] == "host-signal"
    assert vm.wait() == 0


def test_getfd_then_closefd(vm: VmProcess, tmp_path: Path) -> None:
    """getfd takes the fd sent by SCM_RIGHTS with the command; closefd releases the name;
    getfd without an fd is an error."""
    with open(tmp_path / "f", "w") as f, vm.client() as client:
        assert client.command("getfd", {"fdname": "disk0"}, fds=[f.fileno()])["return"] == {}
        assert client.command("closefd", {"fdname": "disk0"})["return"] == {}
        reply = client.command("closefd", {"fdname": "disk0"})
        assert reply["error"]["class"] == "GenericError"
        reply = client.command("getfd", {"fdname": "none"})
        assert reply["error"]["desc"] == "No file descriptor supplied via SCM_RIGHTS"


def test_introspection_lists_installed_plugin_commands(vm: VmProcess) -> None:
    """Every command an installed plugin registers shows in query-commands and, with its
    argument schema, in query-qmp-schema."""
    core_only = set(core_registry().qmp.commands)
    registry: Registry = PluginHost.discover().register(core_registry())
    plugin_commands = {n: c for n, c in registry.qmp.commands.items() if n not in core_only}
    if not plugin_commands:
        pytest.skip("no installed plugin registers a QMP command")
    with vm.client() as client:
        names = {c["name"] for c in client.command("query-commands")["return"]}
        schema = {e["name"]: e for e in client.command("query-qmp-schema")["return"]
                  if e["meta-type"] == "command"}
    for name, command in plugin_commands.items():
        assert name in names
        assert schema[name]["arg-type"] == command.schema


def test_getfd_holds_at_most_64_named_fds(kvm_available: None, tmp_path: Path) -> None:
    """A client cannot pile up named fds: the 65th getfd is refused and its fd closed."""
    vm = VmProcess(loop_guest_args(build_loop_guest(tmp_path)))
    try:
        assert vm.wait_stdout("READY"), vm.stderr
        with vm.client() as qmp, open(tmp_path / "f", "w") as f:
            for i in range(64):
                qmp.send_bytes(b" ", fds=[f.fileno()])
                assert qmp.command("getfd", {"fdname": f"fd{i}"}).get("return") == {}
            qmp.send_bytes(b" ", fds=[f.fileno()])
            refused = qmp.command("getfd", {"fdname": "one-too-many"})
            assert "too many" in refused["error"]["desc"]
            qmp.send_bytes(b" ", fds=[f.fileno()])
            assert qmp.command("getfd", {"fdname": "fd0"}).get("return") == {}   # replacing is fine
            assert qmp.command("closefd", {"fdname": "fd1"}).get("return") == {}
            qmp.send_bytes(b" ", fds=[f.fileno()])
            assert qmp.command("getfd", {"fdname": "again"}).get("return") == {}
    finally:
        vm.close()
