"""Raw byte scripts against a running VM's QMP socket: framing, bad input, size limit,
flow control."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from qmp_vm import VmProcess, build_loop_guest, loop_guest_args

from stratovmm.qmp.framing import MAX_MESSAGE_BYTES
from stratovmm.testing.qmp import QmpTestClient


@pytest.fixture(scope="module")
def vm(kvm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmProcess]:
    kernel = build_loop_guest(tmp_path_factory.mktemp("guest"))
    process = VmProcess(loop_guest_args(kernel))
    assert process.wait_stdout("READY"), process.stderr
    yield process
    process.close()


@pytest.fixture
def qmp(vm: VmProcess) -> Iterator[QmpTestClient]:
    time.sleep(0.05)   # keep each test's commands well inside the flow-control rate
    with vm.client() as client:
        yield client


def status(client: QmpTestClient) -> str:
    reply = client.command("query-status")
    return str(reply["return"]["status"])


def error(reply: dict[str, Any]) -> tuple[str, str]:
    return reply["error"]["class"], reply["error"]["desc"]


def test_command_without_newline(qmp: QmpTestClient) -> None:
    """A command with no trailing newline is answered with one CR LF line and its id."""
    qmp.send_bytes(b'{"execute":"query-status","id":"no-nl"}')
    line = qmp.read_line()
    assert line.endswith(b"\r\n")
    assert json.loads(line) == {"return": {"running": True, "singlestep": False,
                                           "status": "running"}, "id": "no-nl"}


def test_many_commands_in_one_write(qmp: QmpTestClient) -> None:
    """Five commands in one write, mixed separators, get five replies in order."""
    qmp.send_bytes(b'{"execute":"query-status","id":1}{"execute":"query-name","id":2}\n'
                   b'{"execute":"query-version","id":3}\r\n  {"execute":"qmp_capabilities",'
                   b'"id":4}\t{"execute":"query-commands","id":5}')
    assert [qmp.reply()["id"] for _ in range(5)] == [1, 2, 3, 4, 5]


def test_command_split_in_three_writes(qmp: QmpTestClient) -> None:
    """One command sent in three writes, with pauses between, is answered once."""
    for part in (b'{"exec', b'ute":"query-st', b'atus","id":[1,"split"]}'):
        qmp.send_bytes(part)
        time.sleep(0.2)
    assert qmp.reply() == {"return": {"running": True, "singlestep": False,
                                      "status": "running"}, "id": [1, "split"]}


def test_malformed_json_then_recovery(qmp: QmpTestClient) -> None:
    """Malformed JSON gets a GenericError and the next command on the stream works."""
    qmp.send_bytes(b'{"execute":"query-status","id":1,}{"execute":"query-name","id":2}')
    assert error(qmp.reply())[0] == "GenericError"
    assert qmp.reply() == {"return": {}, "id": 2}


def test_non_object_json(qmp: QmpTestClient) -> None:
    """An array, a string and a number each get "QMP input must be a JSON object"."""
    qmp.send_bytes(b'[{"execute":"stop"}] "stop" 42\n')
    for _ in range(3):
        assert error(qmp.reply()) == ("GenericError", "QMP input must be a JSON object")
    assert status(qmp) == "running"


def test_unknown_command(qmp: QmpTestClient) -> None:
    """An unknown command is CommandNotFound with the request's id."""
    qmp.send_bytes(b'{"execute":"no-such-command","id":{"n":1}}')
    reply = qmp.reply()
    assert error(reply)[0] == "CommandNotFound" and reply["id"] == {"n": 1}


def test_unknown_argument_is_refused_before_acting(qmp: QmpTestClient) -> None:
    """`stop` with an unknown argument is refused and the VM keeps running."""
    qmp.send_bytes(b'{"execute":"stop","arguments":{"force":true},"id":"u"}')
    reply = qmp.reply()
    assert error(reply) == ("GenericError", "stop: unknown key 'force' (known: none)")
    assert reply["id"] == "u"
    assert status(qmp) == "running"
    assert qmp.events == []


def test_wrong_argument_type(qmp: QmpTestClient) -> None:
    """An argument of the wrong JSON type is a GenericError naming the parameter."""
    qmp.send_bytes(b'{"execute":"getfd","arguments":{"fdname":5},"id":"t"}')
    assert qmp.reply() == {"error": {
        "class": "GenericError",
        "desc": "getfd: fdname: expected a string, got 5"}, "id": "t"}


def test_huge_message_is_refused_with_bounded_memory(vm: VmProcess, qmp: QmpTestClient) -> None:
    """A 32 MiB message is refused at the size limit, the VMM's peak memory does not grow
    by anything like its size, and the next command works."""
    before = vm.memory_kib("VmHWM")
    qmp.send_bytes(b'{"execute":"query-status","arguments":{"pad":"' + b"A" * (32 << 20)
                   + b'"},"id":"huge"}{"execute":"query-status","id":"after"}')
    reply = qmp.reply()
    assert error(reply) == ("GenericError",
                            f"message larger than {MAX_MESSAGE_BYTES} bytes: discarded")
    assert qmp.reply()["id"] == "after"
    assert vm.memory_kib("VmHWM") - before < 8 * 1024


def test_control_byte_resynchronises(qmp: QmpTestClient) -> None:
    """An unclosed object is dropped by a 0xFF byte and the stream goes on."""
    qmp.send_bytes(b'{"execute":"query-status","arguments":{')
    time.sleep(0.1)
    qmp.send_bytes(b'\xff{"execute":"query-name","id":"ok"}')
    assert error(qmp.reply())[0] == "GenericError"
    assert qmp.reply() == {"return": {}, "id": "ok"}


def test_disconnect_mid_command(vm: VmProcess) -> None:
    """Clients that leave mid-message or before their replies do no harm."""
    half = vm.client()
    half.send_bytes(b'{"execute":"query-sta')
    half.close()
    hasty = vm.client()
    hasty.send_bytes(b'{"execute":"query-status"}' * 20)
    hasty.close()
    with vm.client() as client:
        assert status(client) == "running"
    assert vm.proc.poll() is None


def test_200_commands_in_one_second_are_throttled_with_ids(qmp: QmpTestClient) -> None:
    """200 commands at once: about 100 pass, the rest get OperationThrottled with their ids;
    after a second commands pass again."""
    time.sleep(1.1)
    qmp.send_bytes(b"".join(b'{"execute":"query-status","id":%d}' % i for i in range(200)))
    replies = [qmp.reply() for _ in range(200)]
    assert [r["id"] for r in replies] == list(range(200))
    throttled = [r for r in replies if "error" in r]
    assert all(error(r)[0] == "OperationThrottled" for r in throttled)
    assert 90 <= len(throttled) <= 110
    assert all("return" in r for r in replies[:100])
    time.sleep(1.1)
    assert status(qmp) == "running"
