"""The plugin as the core sees it: registration, the option and JSON key through the core's
own configuration pipeline, the QMP command and event, the seccomp rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stratovmm.api import ConfigError, DeviceNotFound, SeccompRules
from stratovmm.testing.config import parse_config, plugin_registry

from stratovmm_boot_timer import plugin
from stratovmm_boot_timer.device import MAGIC, BootTime, BootTimer

PLUGINS = {"boot-timer": plugin}


def config_for(*args: str) -> dict[str, Any]:
    """The merged JSON document ``stratovmm ARGS`` would run."""
    return parse_config(["-kernel", "/vmlinux", *args], PLUGINS).document


def test_registers_option_device_command_and_event() -> None:
    """-device boot-timer, JSON "boot_timer", query-boot-time and BOOT_TIMER, owned by us."""
    registry = plugin_registry(PLUGINS)
    assert registry.devices.options[("device", "boot-timer")].json_key == "boot_timer"
    assert registry.devices.owner["-device boot-timer"] == "boot-timer"
    assert "boot-timer" in registry.devices.device_types
    assert "query-boot-time" in registry.qmp.commands
    assert "BOOT_TIMER" in registry.qmp.events


@pytest.mark.parametrize(("args", "document"), [
    (["-device", "boot-timer"], {}),
    (["-device", "boot-timer,addr=0xd2000000"], {"addr": "0xd2000000"}),
])
def test_command_line_maps_to_the_json_key(args: list[str], document: dict[str, Any]) -> None:
    """The option lands under "boot_timer" exactly as the JSON file would hold it."""
    assert config_for(*args)["boot_timer"] == document


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    """A JSON "boot_timer" is merged key by key; the command line's addr wins."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot_timer": {"addr": 0xD200_0000}}))
    assert config_for("-config", str(path))["boot_timer"] == {"addr": 0xD200_0000}
    assert config_for("-config", str(path), "-device", "boot-timer,addr=0xd3000000"
                      )["boot_timer"] == {"addr": "0xd3000000"}


@pytest.mark.parametrize(("args", "message"), [
    (["-device", "boot-timer,port=1"], "-device boot-timer: unknown key 'port' (known: addr)"),
    (["-device", "boot-timer,addr=nowhere"],
     '-device boot-timer: "nowhere" is not an address (decimal, or hex with 0x)'),
    (["-device", "boot-timer,addr=0xd1000010"], "-device boot-timer addr: 0xd1000010 is not"
                                                " 4 KiB aligned"),
    (["-device", "boot-timer,addr=0x100000"], "-device boot-timer addr: 0x100000 is outside"
                                              " the free MMIO range [0xd0010000, 0xfec00000)"),
    (["-device", "boot-timer,addr=0xd0000000"], "is outside the free MMIO range"),
    (["-device", "boot-timer", "-device", "boot-timer"],
     "-device boot-timer: given twice (at most one is allowed)"),
])
def test_bad_options_are_refused_naming_them(args: list[str], message: str) -> None:
    """Every refusal is a ConfigError whose message names the option (and the key)."""
    with pytest.raises(ConfigError) as info:
        config_for(*args)
    assert message in str(info.value)


def test_bad_json_value_names_the_key(tmp_path: Path) -> None:
    """A wrong JSON type is refused with the file and the key's path."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot_timer": {"addr": True}}))
    with pytest.raises(ConfigError, match=r"config file .*vm.json: boot_timer.addr: expected"
                                          r" an integer or a string, got true"):
        config_for("-config", str(path))


class FakeVm:
    """The part of VmApi the QMP handler reads."""

    def __init__(self, device: object | None) -> None:
        self._device = device

    def device(self, device_id: str) -> object | None:
        return self._device if device_id == plugin.DEVICE_ID else None


def test_query_boot_time_before_and_after_the_signal() -> None:
    """booted false until the magic write; then the times; DeviceNotFound without a timer."""
    timer = BootTimer(plugin.DEVICE_ID, lambda _boot: None)
    vm: Any = FakeVm(timer)
    assert plugin.query_boot_time(vm, {}) == {"booted": False, "signals": 0}
    timer.write(0, bytes([MAGIC]))
    reply = plugin.query_boot_time(vm, {})
    assert reply["booted"] is True and reply["signals"] == 1
    assert reply["elapsed_us"] > 0 and reply["cpu_us"] > 0
    with pytest.raises(DeviceNotFound, match="-device boot-timer"):
        plugin.query_boot_time(FakeVm(None), {})  # type: ignore[arg-type]


def test_announce_emits_the_event() -> None:
    """The report becomes a BOOT_TIMER event carrying both readings."""
    events: list[tuple[str, dict[str, Any] | None]] = []

    class Vm:
        def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
            events.append((name, data))

    plugin.announce(Vm(), BootTime(2_000_000, 900_000))  # type: ignore[arg-type]
    assert events == [("BOOT_TIMER", {"elapsed_us": 2_000_000, "cpu_us": 900_000})]


def test_seccomp_rules_name_clock_gettime() -> None:
    """The plugin declares the one system call its vCPU-thread path makes."""
    rules = SeccompRules()
    plugin.vmm_seccomp_rules(rules)
    assert "clock_gettime" in rules.syscalls
