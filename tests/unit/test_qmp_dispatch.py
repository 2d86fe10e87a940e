"""QMP dispatch: envelope checks, ids, schema before handler, error classes, core commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratovmm import __version__
from stratovmm.config.model import qmp_rate_from_env
from stratovmm.devices.ratelimit import TokenBucket
from stratovmm.errors import ConfigError, PluginError
from stratovmm.qmp.commands import register_core_commands
from stratovmm.qmp.dispatch import MAX_RECEIVED_FDS, Dispatcher, Session
from stratovmm.qmp.errors import DeviceNotFound, QmpError
from stratovmm.qmp.framing import BadInput, Message
from stratovmm.registry import QmpCommand, QmpRegistry


class FakeVm:
    """What the core commands use of ``VmApi``."""

    def __init__(self) -> None:
        self.state = "running"
        self.name: str | None = "vm1"
        self.calls: list[str] = []
        self.named_fds: dict[str, int] = {}
        self.thread_ids: list[int | None] = [4101, None]

    def pause(self) -> bool:
        self.calls.append("pause")
        self.state = "paused"
        return True

    def resume(self) -> bool:
        self.calls.append("resume")
        self.state = "running"
        return True

    @property
    def vcpu_count(self) -> int:
        return len(self.thread_ids)

    def vcpu_thread_ids(self) -> list[int | None]:
        return self.thread_ids

    def request_shutdown(self, reason: str, detail: str = "") -> None:
        self.calls.append(f"shutdown:{reason}")

    def put_fd(self, name: str, fd: int) -> None:
        previous = self.named_fds.pop(name, None)
        if previous is not None:
            os.close(previous)
        self.named_fds[name] = fd

    def take_fd(self, name: str) -> int | None:
        return self.named_fds.pop(name, None)


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


PLUGIN_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id"],
                 "properties": {"id": {"type": "string"}, "count": {"type": "integer"},
                                "opts": {"type": "object", "additionalProperties": False,
                                         "properties": {"ro": {"type": "boolean"}}}}}


@pytest.fixture
def vm() -> FakeVm:
    return FakeVm()


@pytest.fixture
def handled() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def dispatcher(vm: FakeVm, handled: list[dict[str, Any]]) -> Dispatcher:
    registry = QmpRegistry()
    register_core_commands(registry)
    registry = registry.view("demo")

    def demo(_vm: Any, args: dict[str, Any]) -> Any:
        handled.append(args)
        if args["id"] == "missing":
            raise DeviceNotFound(f"Device '{args['id']}' not found")
        if args["id"] == "buggy":
            raise ZeroDivisionError("boom")
        if args["id"] == "config":
            raise ConfigError("drive: no such file")
        if args["id"] == "unjson":
            return {"x": object()}
        return {"seen": args["id"]}

    registry.add_command(QmpCommand("demo-cmd", demo, PLUGIN_SCHEMA, help="a plugin command"))
    registry.add_event("DEMO_EVENT")
    return Dispatcher(registry, cast(Any, vm), TokenBucket(100, clock=FakeClock()))


@pytest.fixture
def session() -> Iterator[Session]:
    s = Session("test")
    yield s
    s.close()


def run(dispatcher: Dispatcher, session: Session, request: Any) -> dict[str, Any]:
    line = dispatcher.handle(Message(request), session)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    reply = json.loads(line)
    assert isinstance(reply, dict)
    return reply


def error_of(reply: dict[str, Any]) -> tuple[str, str]:
    return reply["error"]["class"], reply["error"]["desc"]


@pytest.mark.parametrize("request_id", ["abc", 7, None, [1, {"a": 2}], {"k": "v"}, 1.5])
def test_any_json_id_is_echoed(dispatcher: Dispatcher, session: Session, request_id: Any) -> None:
    """The id, whatever JSON value it is, comes back in the reply."""
    reply = run(dispatcher, session, {"execute": "qmp_capabilities", "id": request_id})
    assert reply == {"return": {}, "id": request_id}


def test_no_id_means_no_id_in_reply(dispatcher: Dispatcher, session: Session) -> None:
    """Without an id the reply has none."""
    assert run(dispatcher, session, {"execute": "qmp_capabilities"}) == {"return": {}}


@pytest.mark.parametrize("request_", [[1, 2], "stop", 42, None, True])
def test_non_object_input_is_a_generic_error(dispatcher: Dispatcher, session: Session,
                                             request_: Any) -> None:
    """Arrays, strings, numbers, null and booleans get GenericError."""
    reply = run(dispatcher, session, request_)
    assert error_of(reply) == ("GenericError", "QMP input must be a JSON object")
    assert "id" not in reply


@pytest.mark.parametrize(("request_", "desc"), [
    ({"id": 1}, "QMP input lacks member 'execute'"),
    ({"execute": 5, "id": 1}, "QMP input member 'execute' must be a string"),
    ({"execute": "stop", "arguments": [], "id": 1},
     "QMP input member 'arguments' must be an object"),
    ({"execute": "stop", "bogus": 0, "id": 1}, "QMP input member 'bogus' is unexpected"),
])
def test_bad_envelopes_get_errors_with_the_id(dispatcher: Dispatcher, session: Session,
                                              request_: dict[str, Any], desc: str) -> None:
    """Each envelope mistake is a GenericError that still carries the id."""
    reply = run(dispatcher, session, request_)
    assert error_of(reply) == ("GenericError", desc)
    assert reply["id"] == 1


def test_unknown_command(dispatcher: Dispatcher, session: Session) -> None:
    """An unregistered name is CommandNotFound, with the id."""
    reply = run(dispatcher, session, {"execute": "no-such", "id": "x"})
    assert reply == {"error": {"class": "CommandNotFound",
                               "desc": "The command no-such has not been found"}, "id": "x"}


@pytest.mark.parametrize(("arguments", "desc"), [
    ({"id": "a", "extra": 1}, "demo-cmd: unknown key 'extra' (known: count, id, opts)"),
    ({"id": 3}, "demo-cmd: id: expected a string, got 3"),
    ({}, "demo-cmd: missing required key 'id'"),
    ({"id": "a", "opts": {"ro": "yes"}},
     'demo-cmd: opts.ro: expected a boolean (true/false), got "yes"'),
    ({"id": "a", "opts": {"rw": True}}, "demo-cmd: opts: unknown key 'rw' (known: ro)"),
])
def test_schema_is_checked_before_the_handler(dispatcher: Dispatcher, session: Session,
                                              handled: list[dict[str, Any]],
                                              arguments: dict[str, Any], desc: str) -> None:
    """Bad arguments are refused naming the command and the argument (the config's wording:
    one formatter) and the handler never runs."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": arguments, "id": 9})
    assert error_of(reply) == ("GenericError", desc)
    assert reply["id"] == 9
    assert handled == []


def test_core_command_without_arguments_refuses_any(dispatcher: Dispatcher, vm: FakeVm,
                                                    session: Session) -> None:
    """`stop` takes no arguments: one is refused and the VM is not paused."""
    reply = run(dispatcher, session, {"execute": "stop", "arguments": {"now": True}})
    assert error_of(reply)[0] == "GenericError"
    assert vm.calls == []


def test_plugin_command_runs_with_checked_arguments(dispatcher: Dispatcher,
                                                    session: Session) -> None:
    """A plugin-registered command is dispatched like a core one."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": {"id": "d0"}, "id": 1})
    assert reply == {"return": {"seen": "d0"}, "id": 1}


def test_handler_error_class_reaches_the_wire(dispatcher: Dispatcher, session: Session) -> None:
    """A QmpError subclass raised by a handler keeps its class."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": {"id": "missing"}})
    assert error_of(reply) == ("DeviceNotFound", "Device 'missing' not found")


def test_handler_bug_is_a_generic_error(dispatcher: Dispatcher, session: Session) -> None:
    """An unexpected exception in a handler is answered, not propagated."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": {"id": "buggy"},
                                      "id": 2})
    assert error_of(reply)[0] == "GenericError" and "boom" in error_of(reply)[1]
    assert reply["id"] == 2


def test_stratovmm_error_message_is_kept(dispatcher: Dispatcher, session: Session) -> None:
    """A ConfigError from a handler becomes GenericError with its message."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": {"id": "config"}})
    assert error_of(reply) == ("GenericError", "drive: no such file")


def test_reply_that_is_not_json_is_an_error(dispatcher: Dispatcher, session: Session) -> None:
    """A handler returning something JSON cannot encode gets an error with the id."""
    reply = run(dispatcher, session, {"execute": "demo-cmd", "arguments": {"id": "unjson"},
                                      "id": 4})
    assert error_of(reply)[0] == "GenericError" and reply["id"] == 4


def test_id_that_cannot_be_echoed_is_dropped(dispatcher: Dispatcher, session: Session) -> None:
    """An id that is not encodable JSON (infinity) still gets an error reply, without it."""
    reply = run(dispatcher, session, {"execute": "query-status", "id": float("inf")})
    assert error_of(reply)[0] == "GenericError" and "id" not in reply


def test_bad_input_frame_is_a_generic_error(dispatcher: Dispatcher, session: Session) -> None:
    """What the splitter could not parse is answered as GenericError on one line."""
    line = dispatcher.handle(BadInput("JSON parse error: x"), session)
    assert json.loads(line) == {"error": {"class": "GenericError", "desc": "JSON parse error: x"}}
    assert line.endswith(b"\r\n")


def test_flow_control_throttles_with_the_id(vm: FakeVm, session: Session) -> None:
    """Past 100 commands in an instant, replies are OperationThrottled with their ids."""
    registry = QmpRegistry()
    register_core_commands(registry)
    dispatcher = Dispatcher(registry, cast(Any, vm), TokenBucket(100, clock=FakeClock()))
    replies = [run(dispatcher, session, {"execute": "query-status", "id": i})
               for i in range(150)]
    assert all("return" in r for r in replies[:100])
    assert [r["id"] for r in replies[100:]] == list(range(100, 150))
    assert {r["error"]["class"] for r in replies[100:]} == {"OperationThrottled"}


def test_lifecycle_commands_drive_the_vm(dispatcher: Dispatcher, vm: FakeVm,
                                         session: Session) -> None:
    """stop, cont and quit call pause, resume and a host-qmp-quit shutdown."""
    for name in ("stop", "cont", "quit"):
        assert run(dispatcher, session, {"execute": name}) == {"return": {}}
    assert vm.calls == ["pause", "resume", "shutdown:host-qmp-quit"]


@pytest.mark.parametrize(("state", "command"), [
    ("paused", "stop"), ("shutdown", "stop"), ("running", "cont"), ("shutdown", "cont")])
def test_wrong_state_transition_is_refused(dispatcher: Dispatcher, vm: FakeVm, session: Session,
                                           state: str, command: str) -> None:
    """As StratoVirt v0.3's pause()/resume(): stop only from running, cont only from paused;
    otherwise GenericError naming the state, and the VM is not touched (so no event)."""
    vm.state = state
    assert error_of(run(dispatcher, session, {"execute": command})) == (
        "GenericError", f"{command}: the VM is {state}, not "
        f"{'running' if command == 'stop' else 'paused'}")
    assert vm.calls == []


def test_query_cpus_has_v03_x86_shape_with_thread_ids(dispatcher: Dispatcher,
                                                       session: Session) -> None:
    """query-cpus: one x86 CpuInfo per vCPU with its thread id (0 before the thread runs),
    qom_path and one-socket props; query-hotpluggable-cpus lists each as present."""
    cpus = run(dispatcher, session, {"execute": "query-cpus"})["return"]
    assert cpus == [
        {"arch": "x86", "current": True, "qom_path": "/machine/unattached/device[0]",
         "halted": False, "props": {"socket-id": 0, "thread-id": 0, "core-id": 0},
         "CPU": 0, "thread_id": 4101},
        {"arch": "x86", "current": True, "qom_path": "/machine/unattached/device[1]",
         "halted": False, "props": {"socket-id": 0, "thread-id": 0, "core-id": 1},
         "CPU": 1, "thread_id": 0}]
    hot = run(dispatcher, session, {"execute": "query-hotpluggable-cpus"})["return"]
    assert hot == [{"type": "host-x86-cpu", "vcpus-count": 1, "qom-path": cpu["qom_path"],
                    "props": cpu["props"]} for cpu in cpus]


def test_integer_arguments_refuse_floats(dispatcher: Dispatcher, session: Session,
                                         handled: list[dict[str, Any]]) -> None:
    """1.0 is not an integer argument (JSON Schema alone would let it through to the
    handler)."""
    reply = run(dispatcher, session, {"execute": "demo-cmd",
                                      "arguments": {"id": "a", "count": 1.0}})
    assert error_of(reply) == ("GenericError", "demo-cmd: count: expected an integer, got 1.0")
    assert handled == []


@pytest.mark.parametrize("state", ["running", "paused", "shutdown"])
def test_query_status(dispatcher: Dispatcher, vm: FakeVm, session: Session, state: str) -> None:
    """query-status reports the state and running only when running."""
    vm.state = state
    assert run(dispatcher, session, {"execute": "query-status"})["return"] == {
        "running": state == "running", "singlestep": False, "status": state}


def test_query_name(dispatcher: Dispatcher, vm: FakeVm, session: Session) -> None:
    """query-name gives -name, or an empty object without one."""
    assert run(dispatcher, session, {"execute": "query-name"})["return"] == {"name": "vm1"}
    vm.name = None
    assert run(dispatcher, session, {"execute": "query-name"})["return"] == {}


def test_query_version(dispatcher: Dispatcher, session: Session) -> None:
    """query-version gives the greeting's version: qemu 5.0.1, StratoVMM's in package."""
    ret = run(dispatcher, session, {"execute": "query-version"})["return"]
    assert ret == {"qemu": {"micro": 1, "minor": 0, "major": 5},
                   "package": f"StratoVMM-{__version__}"}


def test_introspection_lists_plugin_commands(dispatcher: Dispatcher, session: Session) -> None:
    """query-commands and query-qmp-schema include a plugin's command, schema and event."""
    names = [c["name"] for c in run(dispatcher, session, {"execute": "query-commands"})["return"]]
    assert {"demo-cmd", "qmp_capabilities", "stop", "cont", "quit", "query-status", "getfd",
            "query-qmp-schema"} <= set(names)
    schema = run(dispatcher, session, {"execute": "query-qmp-schema"})["return"]
    entries = {(e["meta-type"], e["name"]): e for e in schema}
    assert entries[("command", "demo-cmd")]["arg-type"] == PLUGIN_SCHEMA
    assert entries[("command", "demo-cmd")]["help"] == "a plugin command"
    assert {"SHUTDOWN", "STOP", "RESUME", "DEVICE_DELETED", "DEMO_EVENT"} <= {
        name for kind, name in entries if kind == "event"}


def test_capabilities_refuses_unknown_capability(dispatcher: Dispatcher,
                                                 session: Session) -> None:
    """No capability is offered, so enabling oob is an error."""
    reply = run(dispatcher, session, {"execute": "qmp_capabilities",
                                      "arguments": {"enable": ["oob"]}})
    assert error_of(reply) == ("GenericError", "Capability 'oob' not available")


def test_getfd_names_the_oldest_received_fd(dispatcher: Dispatcher, vm: FakeVm,
                                            session: Session) -> None:
    """getfd stores the first fd the client passed under fdname; closefd closes it."""
    r1, w1 = os.pipe()
    session.add_received_fds([r1, w1])
    assert run(dispatcher, session, {"execute": "getfd", "arguments": {"fdname": "tap0"}}) == {
        "return": {}}
    assert vm.named_fds == {"tap0": r1}
    assert session.received_fd_count == 1
    assert run(dispatcher, session, {"execute": "closefd", "arguments": {"fdname": "tap0"}}) == {
        "return": {}}
    with pytest.raises(OSError):
        os.fstat(r1)


def test_getfd_without_fd_and_bad_names(dispatcher: Dispatcher, session: Session) -> None:
    """getfd with no fd passed, a name starting with a digit, and closefd of an unknown
    name are GenericErrors."""
    assert error_of(run(dispatcher, session, {"execute": "getfd",
                                              "arguments": {"fdname": "x"}})) == (
        "GenericError", "No file descriptor supplied via SCM_RIGHTS")
    r, w = os.pipe()
    os.close(w)
    session.add_received_fds([r])
    assert "digit" in error_of(run(dispatcher, session, {"execute": "getfd",
                                                         "arguments": {"fdname": "1x"}}))[1]
    assert session.received_fd_count == 1
    assert error_of(run(dispatcher, session, {"execute": "closefd",
                                              "arguments": {"fdname": "nope"}}))[1] == (
        "File descriptor named 'nope' not found")


def test_session_bounds_and_closes_received_fds() -> None:
    """A session keeps at most MAX_RECEIVED_FDS fds, closes the excess and the rest on close."""
    session = Session("s")
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_RECEIVED_FDS + 3)]
    assert session.add_received_fds(fds) == 3
    for fd in fds[MAX_RECEIVED_FDS:]:
        with pytest.raises(OSError):
            os.fstat(fd)
    session.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_plugin_cannot_take_a_core_command_name() -> None:
    """Core commands are registered first, so a plugin registering `quit` fails by name."""
    registry = QmpRegistry()
    register_core_commands(registry)
    registry = registry.view("evil")
    with pytest.raises(PluginError, match="evil"):
        registry.add_command(QmpCommand("quit", lambda _vm, _args: None))


def test_qmp_error_rejects_unknown_class() -> None:
    """QmpError only carries StratoVirt's QMP error classes."""
    assert QmpError("x", "DeviceNotActive").to_qmp() == {"class": "DeviceNotActive", "desc": "x"}
    with pytest.raises(ValueError):
        QmpError("x", "NoSuchClass")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["execute", "arguments", "id", "fdname", "x"])
                      | st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(deadline=None)      # no timing claims: a loaded host once took 275 ms for one
@given(st.dictionaries(st.sampled_from(["execute", "arguments", "id", "extra"]),
                       json_values | st.sampled_from(["query-status", "getfd", "closefd",
                                                      "qmp_capabilities", "query-name"]),
                       max_size=4) | json_values)
def test_any_json_value_gets_exactly_one_reply_line(request_: Any) -> None:
    """Whatever JSON value arrives, the dispatcher answers one CR LF line and never raises."""
    registry = QmpRegistry()
    register_core_commands(registry)
    session = Session("fuzz")
    dispatcher = Dispatcher(registry, cast(Any, FakeVm()), TokenBucket(1e9))
    line = dispatcher.handle(Message(request_), session)
    session.close()
    reply = json.loads(line)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert ("return" in reply) != ("error" in reply)


@pytest.mark.parametrize(("environ", "rate"), [({}, 100), ({"STRATOVMM_QMP_RATE": "1000"}, 1000),
                                               ({"STRATOVMM_QMP_RATE": "2.5"}, 2.5)])
def test_qmp_rate_comes_from_the_environment(environ: dict[str, str], rate: float) -> None:
    """STRATOVMM_QMP_RATE sets the commands admitted per second; 100 without it."""
    assert qmp_rate_from_env(environ) == rate


@pytest.mark.parametrize("text", ["fast", "0", "-5", "1e7", ""])
def test_bad_qmp_rate_names_the_variable(text: str) -> None:
    """A rate that is not a number in 1..1000000 is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=r"^STRATOVMM_QMP_RATE: .* between 1 and 1000000"):
        qmp_rate_from_env({"STRATOVMM_QMP_RATE": text})
