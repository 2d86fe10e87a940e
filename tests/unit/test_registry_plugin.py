"""The registries refuse what a broken plugin registers, and the plugin host checks the
plugin API version and names the failing plugin."""

from __future__ import annotations

import types
from typing import Any

import pytest
import widget_plugin

from stratovmm import cli, hookspecs
from stratovmm.errors import PluginError
from stratovmm.plugin import API_VERSION, PluginHost, check_api_version, hookimpl
from stratovmm.records import field_names
from stratovmm.registry import (
    DeviceRegistry,
    DeviceType,
    HotplugDriver,
    OptionSpec,
    QmpCommand,
    QmpRegistry,
    SeccompRules,
    SubOption,
)

STRICT: dict[str, Any] = {"type": "object", "additionalProperties": False,
                          "properties": {"id": {"type": "string"}}}


def nothing(*_args: Any) -> None:
    """A factory/handler that does nothing."""


def device(name: str, option: str | None = None, json_key: str | None = None,
           schema: dict[str, Any] | None = None) -> DeviceType:
    """A device type named ``name`` with option ``-option`` and JSON key ``json_key``."""
    spec = OptionSpec(option or name, "help", json_key or name, sub=(SubOption("id", "id"),))
    return DeviceType(name, spec, STRICT if schema is None else schema, nothing)


def test_device_registered() -> None:
    """A valid device type adds its option, its JSON key and its owner."""
    registry = DeviceRegistry()
    registry = registry.view("p")
    registry.add_device_type(device("dev"))
    assert registry.device_types["dev"].option.json_key == "dev"
    assert ("dev", None) in registry.options
    assert registry.owner["-dev"] == "p"


def test_duplicate_device_name() -> None:
    """A second device type with the same name is refused, naming the plugin."""
    registry = DeviceRegistry()
    registry.add_device_type(device("dev"))
    registry = registry.view("second")
    with pytest.raises(PluginError, match="plugin second: device dev: already registered"):
        registry.add_device_type(device("dev", option="other", json_key="other"))


def test_duplicate_option_name() -> None:
    """Two device types may not claim one option; the message names both owners."""
    registry = DeviceRegistry()
    registry = registry.view("first")
    registry.add_device_type(device("a", option="same", json_key="a"))
    registry = registry.view("second")
    with pytest.raises(PluginError, match="option -same is already registered by first"):
        registry.add_device_type(device("b", option="same", json_key="b"))


def test_plugin_cannot_take_a_core_option() -> None:
    """A plugin registering -smp collides with the core's option."""
    registry = cli.core_registry().devices
    registry = registry.view("greedy")
    with pytest.raises(PluginError, match="plugin greedy: option -smp is already registered"
                                          " by core"):
        registry.add_device_type(device("cpu", option="smp", json_key="cpus"))


def test_duplicate_json_key() -> None:
    """Two device types may not share a JSON key (nor take a core key)."""
    registry = cli.core_registry().devices
    with pytest.raises(PluginError, match="JSON key 'machine-config' already taken"):
        registry.add_device_type(device("m2", option="m2", json_key="machine-config"))


def test_same_option_different_drivers() -> None:
    """-device vsock and -device other are distinct options."""
    registry = DeviceRegistry()
    for name in ("vsock", "other"):
        spec = OptionSpec("device", "h", name, driver=name, sub=(SubOption("id", "id"),))
        registry.add_device_type(DeviceType(name, spec, STRICT, nothing))
    assert {o.display for o in registry.options.values()} == {"-device vsock", "-device other"}


@pytest.mark.parametrize("name", ["", "-x", "1abc", "a b", "a,b", "a=b"])
def test_bad_option_name(name: str) -> None:
    """Option names must be identifiers the command line can carry."""
    with pytest.raises(PluginError, match="bad option name"):
        DeviceRegistry().add_option(OptionSpec(name, "h", "key"))


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {}}, "additionalProperties false"),
    ({"type": "object", "additionalProperties": True}, "additionalProperties false"),
    ({"type": "array", "additionalProperties": False}, "must be an object"),
    ({"additionalProperties": False}, "must be an object"),
    ({"type": "object", "additionalProperties": False, "properties": {"x": {"type": 5}}},
     "invalid JSON schema"),
    ({"type": "object", "additionalProperties": False, "required": "x"}, "invalid JSON schema"),
])
def test_non_strict_or_invalid_schema(schema: dict[str, Any], message: str) -> None:
    """A schema that is invalid, or accepts unknown keys, is refused at registration."""
    registry = DeviceRegistry()
    registry = registry.view("sloppy")
    with pytest.raises(PluginError, match=f"plugin sloppy: device dev: .*{message}"):
        registry.add_device_type(device("dev", schema=schema))
    assert "dev" not in registry.device_types and not registry.options


def hotplug(driver: str, slots: int, schema: dict[str, Any]) -> HotplugDriver:
    """A hotplug driver whose callbacks do nothing."""
    callbacks: dict[str, Any] = {name: nothing for name in field_names(HotplugDriver)
                                 if name not in ("driver", "slots", "schema")}
    return HotplugDriver(driver=driver, slots=slots, schema=schema, **callbacks)


def test_hotplug_drivers() -> None:
    """Hotplug drivers: unique names, 0..16 slots, strict schemas."""
    registry = DeviceRegistry()
    registry.add_hotplug_driver(hotplug("virtio-x-mmio", 4, STRICT))
    with pytest.raises(PluginError, match="already registered"):
        registry.add_hotplug_driver(hotplug("virtio-x-mmio", 1, STRICT))
    with pytest.raises(PluginError, match=r"slots must be 0\.\.16"):
        registry.add_hotplug_driver(hotplug("y", 17, STRICT))
    with pytest.raises(PluginError, match="additionalProperties false"):
        registry.add_hotplug_driver(hotplug("z", 1, {"type": "object"}))


def test_qmp_registry() -> None:
    """QMP commands: unique, strict argument schemas; events declared once."""
    registry = QmpRegistry()
    registry = registry.view("q")
    registry.add_command(QmpCommand("query-x", nothing))
    with pytest.raises(PluginError, match="plugin q: QMP command query-x: already registered"):
        registry.add_command(QmpCommand("query-x", nothing))
    with pytest.raises(PluginError, match="additionalProperties false"):
        registry.add_command(QmpCommand("loose", nothing, schema={"type": "object"}))
    registry.add_event("X_HAPPENED")
    with pytest.raises(PluginError, match="X_HAPPENED already declared"):
        registry.add_event("X_HAPPENED")


def test_seccomp_rules_remember_first_owner() -> None:
    """Seccomp rules merge; the first plugin to ask for a syscall is remembered."""
    rules = SeccompRules()
    rules = rules.view("a")
    rules.allow("read", "write")
    rules.allow_ioctl(0x5401)
    rules = rules.view("b")
    rules.allow("read", "ppoll")
    assert rules.syscalls == {"read": "a", "write": "a", "ppoll": "b"}
    assert rules.ioctls == {0x5401: "a"}


# -- plugin API version -------------------------------------------------------------


def module(**attrs: Any) -> types.ModuleType:
    """A module object with ``attrs``."""
    mod = types.ModuleType("fake_plugin")
    vars(mod).update(attrs)
    return mod


def test_api_version_accepted() -> None:
    """The core's own version and an older minor of the same major load."""
    check_api_version("p", module(STRATOVMM_API=API_VERSION))
    major = API_VERSION.split(".")[0]
    check_api_version("p", module(STRATOVMM_API=f"{major}.0"))


@pytest.mark.parametrize(("value", "message"), [
    (None, "does not declare STRATOVMM_API"),
    (1.0, "does not declare STRATOVMM_API"),
    ("1", "is not MAJOR.MINOR"),
    ("1.0.1", "is not MAJOR.MINOR"),
    ("one.zero", "is not MAJOR.MINOR"),
    ("2.0", "written for plugin API 2.0"),
    ("0.9", "written for plugin API 0.9"),
    ("1.99", "written for plugin API 1.99"),
])
def test_api_version_refused(value: Any, message: str) -> None:
    """A missing, malformed, other-major or newer-minor API version is refused by name."""
    attrs = {} if value is None else {"STRATOVMM_API": value}
    with pytest.raises(PluginError, match=f"plugin fancy: .*{message}"):
        check_api_version("fancy", module(**attrs))


def test_host_refuses_wrong_api_version() -> None:
    """PluginHost checks every module's API version before registering it."""
    with pytest.raises(PluginError, match=r"plugin old: written for plugin API 0\.1"):
        PluginHost({"ok": widget_plugin, "old": module(STRATOVMM_API="0.1")})


def test_host_refuses_unknown_hook() -> None:
    """A hookimpl whose name is no hookspec is refused, naming the plugin."""
    def vmm_no_such_hook() -> None:
        """Not a hook."""

    bad = module(STRATOVMM_API=API_VERSION, vmm_no_such_hook=hookimpl(vmm_no_such_hook))
    with pytest.raises(PluginError, match="plugin typo: unknown hook 'vmm_no_such_hook'"):
        PluginHost({"ok": widget_plugin, "typo": bad})


def test_host_names_plugin_whose_hook_fails() -> None:
    """A registration hook that raises stops start-up with the plugin's name and reason."""
    def vmm_register_devices(registry: DeviceRegistry) -> None:
        """Fails."""
        raise RuntimeError("boom")

    host = PluginHost({"crashy": module(STRATOVMM_API=API_VERSION,
                                        vmm_register_devices=hookimpl(vmm_register_devices))})
    with pytest.raises(PluginError, match=r"plugin crashy: vmm_register_devices failed: .*boom"):
        host.register(cli.core_registry())


def test_host_attributes_options_to_plugins() -> None:
    """Options registered through the host are owned by the plugin that added them."""
    registry = PluginHost({"widget": widget_plugin}).register(cli.core_registry())
    assert registry.devices.owner["-widget"] == "widget"
    assert registry.devices.owner["-smp"] == "core"


def test_every_hook_is_documented() -> None:
    """Every hookspec has a docstring and the vmm_ prefix."""
    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("vmm_")]
    assert specs
    for spec in specs:
        assert spec.__doc__ and spec.__doc__.strip(), spec.__name__
