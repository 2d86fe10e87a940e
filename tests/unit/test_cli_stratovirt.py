"""What StratoVirt v0.3's command line and config parser accept beyond our own grammar:
-S, -V/-version/--version, machine-config's text values and case-insensitive type,
"mem-share", ``-api-channel unix:PATH,server,nowait`` and an option with all keys
optional given alone (``-balloon``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import CliResult

from stratovmm import __version__
from stratovmm.config.load import load_config, parse_command_line
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry, OptionSpec, SubOption, ValueKind

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize("flag", ["-S", "-freeze"])
def test_S_is_freeze(devices: DeviceRegistry, flag: str) -> None:
    """-S (v0.3's short form) creates the VM frozen, as -freeze does."""
    assert load_config(["-kernel", "k", flag], devices).runtime.freeze


@pytest.mark.parametrize("flag", ["-V", "-version", "--version"])
def test_version_flags_print_name_and_version(run_cli: Callable[..., CliResult],
                                              flag: str) -> None:
    """-V, -version and --version print "StratoVMM X.Y.Z" and exit 0, before any check
    (no kernel needed), as v0.3's arg_parser does."""
    result = run_cli(flag)
    assert (result.rc, result.out, result.err) == (0, f"StratoVMM {__version__}\n", "")


def test_help_lists_S_and_version(run_cli: Callable[..., CliResult]) -> None:
    """--help names -S and the version flags."""
    out = run_cli("--help").out
    assert "-S " in out and "same as -freeze" in out
    assert "-V, -version, --version" in out


def config_file(tmp_path: Path, machine: dict[str, object]) -> str:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"machine-config": machine}))
    return str(path)


@pytest.mark.parametrize(("machine", "expected"), [
    ({"vcpu_count": "2", "mem_size": "1024M"}, (2, GiB, False, True)),
    ({"mem_size": "1g", "type": "microvm"}, (1, GiB, False, True)),
    ({"mem_size": "512m", "type": "MICROVM"}, (1, 512 * MiB, False, True)),
    ({"mem_size": str(256 * MiB)}, (1, 256 * MiB, False, True)),
    ({"mem_size": 268435456, "mem_share": "true", "dump_guest_core": "false"},
     (1, 256 * MiB, True, False)),
    ({"mem-share": True, "dump-guest-core": False}, (1, 256 * MiB, True, False)),
])
def test_machine_config_text_values(devices: DeviceRegistry, tmp_path: Path,
                                    machine: dict[str, object],
                                    expected: tuple[object, ...]) -> None:
    """machine-config values as v0.3 reads them: numbers or text, sizes with M/G in either
    case, "true"/"false" text, type in any case, and -machine's hyphenated key names."""
    config = load_config(["-kernel", "k", "-config", config_file(tmp_path, machine)], devices)
    m = config.machine
    assert (m.vcpus, m.mem_size, m.mem_share, m.dump_guest_core) == expected
    assert config.document["machine-config"].get("type", "MicroVm") == "MicroVm"


@pytest.mark.parametrize(("machine", "needle"), [
    ({"mem_share": True, "mem-share": False}, "mem_share is given twice"),
    ({"mem_size": "lots"}, 'machine-config.mem_size: expected an integer, got "lots"'),
    ({"mem_share": "on"}, "machine-config.mem_share: expected a boolean"),
    ({"type": "pc"}, '"pc" is not one of "MicroVm"'),
])
def test_machine_config_text_that_does_not_convert(devices: DeviceRegistry, tmp_path: Path,
                                                   machine: dict[str, object],
                                                   needle: str) -> None:
    """Text v0.3 would not read either is still refused, naming the key."""
    with pytest.raises(ConfigError, match=needle):
        load_config(["-kernel", "k", "-config", config_file(tmp_path, machine)], devices)


@pytest.mark.parametrize(("channel", "path"), [
    ("unix:/tmp/vm.sock", "/tmp/vm.sock"), ("unix:/tmp/vm.sock,server,nowait", "/tmp/vm.sock"),
    ("unix:/tmp/vm.sock,server=on,wait=off", "/tmp/vm.sock"),
])
def test_api_channel_accepts_qemu_socket_flags(devices: DeviceRegistry, channel: str,
                                               path: str) -> None:
    """-api-channel unix:PATH may carry QEMU's ,server,nowait (v0.3 ignores what follows
    the path; the QMP socket is always a listening server that does not wait)."""
    assert load_config(["-kernel", "k", "-api-channel", channel],
                       devices).runtime.api_channel == path


@pytest.mark.parametrize("channel", ["unix:/tmp/vm.sock,reconnect=1", "unix:,server", "tcp:1"])
def test_api_channel_refuses_other_flags(devices: DeviceRegistry, channel: str) -> None:
    """Anything else after the path is refused, naming the option."""
    with pytest.raises(ConfigError, match=r"-api-channel: .* is not unix:PATH"):
        load_config(["-kernel", "k", "-api-channel", channel], devices)


def test_option_with_only_optional_keys_may_stand_alone(devices: DeviceRegistry) -> None:
    """An option whose keys are all optional (v0.3's -balloon) may be given without a
    value, before another option or last: every key at its default; an option with a
    required key still needs its value."""
    devices.add_option(OptionSpec("gadget", "test", "gadget", file_key=False,
                                  sub=(SubOption("deflate", "deflate", ValueKind.BOOL),)))
    for argv in (["-gadget", "-kernel", "k"], ["-kernel", "k", "-gadget"]):
        parsed = parse_command_line(argv, devices)
        assert parsed.runtime["gadget"] == {}
        assert parsed.document["boot-source"] == {"kernel_image_path": "k"}
    assert parse_command_line(["-gadget", "deflate=on"], devices).runtime["gadget"] == {
        "deflate": True}
    with pytest.raises(ConfigError, match="-widget"):
        parse_command_line(["-widget", "-kernel", "k"], devices)
