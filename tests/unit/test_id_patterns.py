"""Ids (and every other whole-string pattern) refuse a trailing newline everywhere they are
checked: on the command line, in the JSON file and in QMP arguments.

jsonschema applies ``pattern`` with ``re.search``, and Python's ``$`` also matches just
before a final ``\\n``: ``^[A-Za-z0-9_.-]+$`` accepted ``"d0\\n"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from clirun import plugin_set

from stratovmm.cli import core_registry
from stratovmm.config.core_options import ITEM_ID_SCHEMA, whole_string
from stratovmm.config.schema import assemble
from stratovmm.errors import ConfigError
from stratovmm.machine.hotplug import register_hotplug_commands
from stratovmm.plugin import PluginHost
from stratovmm.qmp.dispatch import Dispatcher, Session
from stratovmm.qmp.framing import Message
from stratovmm.registry import Registry
from stratovmm.testing.config import parse_config


@pytest.fixture(scope="module")
def installed() -> Registry:
    """The registry ``stratovmm`` builds with every installed plugin, device_add included."""
    registry = PluginHost.discover().register(core_registry())
    register_hotplug_commands(registry.qmp, registry.devices.hotplug_drivers.values())
    return registry


@pytest.mark.parametrize("args", [
    ["-iothread", "id=io0\n"],
    ["-widget", "id=w0\n"],
])
def test_newline_terminated_id_is_refused_on_the_command_line(args: list[str]) -> None:
    """``id=NAME\\n`` is a bad id: the configuration error (exit status 2) names the option.
    (``parse_config`` builds no VM, so an id wrongly accepted cannot start one in pytest.)"""
    with pytest.raises(ConfigError, match=f"^{args[0]}[ :].*must be letters, digits") as info:
        parse_config(["-kernel", "k", *args], plugin_set())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("document", [
    {"iothread": [{"id": "io0\n"}]},
    {"widget": [{"widget_id": "w0\n"}]},
])
def test_newline_terminated_id_is_refused_in_the_json_file(
        write_json: Callable[[str], Path], document: dict[str, Any]) -> None:
    """The same id in the ``-config`` file is refused the same way."""
    path = write_json(json.dumps(document))
    with pytest.raises(ConfigError, match="must be letters, digits"):
        parse_config(["-kernel", "k", "-config", str(path)], plugin_set())


@pytest.fixture
def session() -> Iterator[Session]:
    s = Session("test")
    yield s
    s.close()


@pytest.mark.parametrize(("command", "arguments"), [
    ("blockdev-add", {"node-name": "n0\n", "file": {"driver": "file", "filename": "/x"}}),
    ("device_add", {"driver": "virtio-blk-mmio", "id": "d0\n", "addr": "0x0"}),
    ("netdev_add", {"id": "net0\n", "ifname": "tap0"}),
])
def test_newline_terminated_id_is_refused_in_qmp(installed: Registry, session: Session,
                                                 command: str, arguments: dict[str, Any]) -> None:
    """QMP arguments are checked by the same patterns: a GenericError with the request's id,
    before the handler runs (the fake VM has nothing a handler could use)."""
    if command not in installed.qmp.commands:
        pytest.skip(f"the plugin providing {command} is not installed")
    dispatcher = Dispatcher(installed.qmp, cast(Any, object()))
    line = dispatcher.handle(Message({"execute": command, "arguments": arguments, "id": 9}),
                             session)
    reply = json.loads(line)
    assert reply["id"] == 9 and reply["error"]["class"] == "GenericError", reply
    key = "node-name" if command == "blockdev-add" else "id"
    assert reply["error"]["desc"].startswith(f"{command}: {key}: "), reply


def _patterns(schema: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield where, schema["pattern"]
        for key, value in schema.items():
            yield from _patterns(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _patterns(value, f"{where}[{i}]")


def test_every_end_anchored_pattern_refuses_a_trailing_newline(installed: Registry) -> None:
    """Every pattern of the config schema and of every QMP command that is anchored at the end
    is written with the whole-string anchor (none ends in a bare ``$``)."""
    schemas: list[tuple[str, Any]] = [("config", assemble(installed.devices))]
    schemas += [(f"qmp {name}", dict(cmd.schema)) for name, cmd in installed.qmp.commands.items()]
    found = [(where, p) for name, schema in schemas for where, p in _patterns(schema, name)]
    assert any(p == ITEM_ID_SCHEMA["pattern"] for _, p in found)
    bare = [(where, p) for where, p in found if p.endswith("$")]
    assert not bare, bare


def test_whole_string_pattern_means_the_same_to_python_and_ecma() -> None:
    """``whole_string`` matches exactly the whole text under re.search (jsonschema's way)."""
    pattern = whole_string("[a-z]+")
    assert re.search(pattern, "abc")
    for text in ("abc\n", "abc\nabc", "\nabc", "ab1", ""):
        assert not re.search(pattern, text), text
