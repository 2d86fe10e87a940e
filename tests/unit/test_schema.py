"""One schema module: the config file, QMP arguments and device_add's per-driver arguments are
checked by one validator with one integer rule (``1.0`` is not an integer anywhere) and told
by one formatter (``WHERE: REASON``, the reason worded alike); ``device_add`` with ``addr:
1.0`` is a GenericError naming the argument, never an internal error."""

from __future__ import annotations

from typing import Any, cast

import pytest

from stratovmm.config import schema
from stratovmm.errors import ConfigError
from stratovmm.machine.hotplug import driver_arguments, register_hotplug_commands
from stratovmm.qmp.dispatch import Dispatcher, Session
from stratovmm.qmp.errors import GenericError
from stratovmm.registry import HotplugDriver, QmpCommand, QmpRegistry

COUNT = {"type": "object", "additionalProperties": False,
         "properties": {"count": {"type": "integer"}}}
DISK_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["driver", "id"],
               "properties": {"driver": {"const": "disk"}, "id": {"type": "string"},
                              "queues": {"type": "integer"}}}
DISK = HotplugDriver("disk", 4, DISK_SCHEMA, lambda *_: None, lambda *_: None, lambda *_: None)


def qmp_error(registry: QmpRegistry, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The reply to one request, run against a VM no handler could use (a handler that ran
    would fail with an internal error)."""
    reply = Dispatcher(registry, cast(Any, object())).execute(
        {"execute": command, "arguments": arguments, "id": 7}, Session("test"))
    assert reply["id"] == 7
    return cast(dict[str, Any], reply["error"])


@pytest.mark.parametrize("value", [1.0, 2.0, True, "1"])
def test_one_integer_rule(value: Any) -> None:
    """The validator refuses a float with an integral value, a boolean and text as an
    integer, and takes an int."""
    validator = schema.Validator(COUNT)
    assert not validator.is_valid({"count": value})
    assert validator.is_valid({"count": 1})


def test_config_and_qmp_refuse_a_float_integer_with_the_same_reason() -> None:
    """``count: 1.0`` is ``expected an integer, got 1.0`` in a config file and in a QMP
    command's arguments; only the location names differ."""
    with pytest.raises(ConfigError) as refused:
        schema.check({"count": 1.0}, COUNT, schema.file_path_name("vm.json"))
    assert str(refused.value) == "config file vm.json: count: expected an integer, got 1.0"
    registry = QmpRegistry()
    registry.add_command(QmpCommand("count-cmd", lambda vm, args: None, COUNT, help="counts"))
    assert qmp_error(registry, "count-cmd", {"count": 1.0}) == {
        "class": "GenericError", "desc": "count-cmd: count: expected an integer, got 1.0"}


@pytest.mark.parametrize(("key", "reason"), [
    ("addr", "expected a string or an integer, got 1.0"),
    ("lun", "expected an integer, got 1.0"),
])
def test_device_add_float_slot_is_a_generic_error_naming_it(key: str, reason: str) -> None:
    """``device_add`` with ``addr: 1.0`` or ``lun: 1.0`` is a GenericError naming the
    argument, refused by the argument schema before the handler runs."""
    registry = QmpRegistry()
    register_hotplug_commands(registry, [DISK])
    assert qmp_error(registry, "device_add", {"driver": "disk", "id": "d", key: 1.0}) == {
        "class": "GenericError", "desc": f"device_add: {key}: {reason}"}


def test_driver_arguments_use_the_same_rule_and_wording() -> None:
    """A driver's own integer argument given as ``2.0`` is refused by the driver's schema in
    the same words, located under ``device_add DRIVER``."""
    with pytest.raises(GenericError) as refused:
        driver_arguments(DISK, {"driver": "disk", "id": "d", "queues": 2.0})
    assert str(refused.value) == "device_add disk: queues: expected an integer, got 2.0"


@pytest.mark.parametrize(("path", "name"), [
    ([], "NAME"), (["drive", 0, "iops"], "NAME: drive[0].iops"), (["opts", "ro"], "NAME: opts.ro"),
])
def test_locations_are_named_alike(path: list[str | int], name: str) -> None:
    """The config file and QMP name a JSON path the same way."""
    assert schema.under("NAME")(path) == name
