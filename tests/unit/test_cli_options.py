"""Every core option lands where the JSON file would hold it, the file merges under the
command line (which wins), and ``--help`` lists plugin options."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from clirun import CliResult

from stratovmm.boot import layout
from stratovmm.config.load import load_config, merge, parse_command_line
from stratovmm.config.model import VmConfig
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry

MiB, GiB = 1 << 20, 1 << 30


def load(devices: DeviceRegistry, *argv: str) -> VmConfig:
    """The validated config for ``argv`` (``-kernel k`` added when absent)."""
    args = list(argv) if "-kernel" in argv or "-config" in argv else ["-kernel", "k", *argv]
    return load_config(args, devices)


def test_defaults(devices: DeviceRegistry) -> None:
    """Without options: 1 vCPU, 256M, anonymous private RAM, dumpable, seccomp on."""
    config = load(devices)
    m = config.machine
    assert (m.vcpus, m.mem_size, m.mem_path, m.mem_share, m.dump_guest_core) == (
        1, 256 * MiB, None, False, True)
    assert config.boot.append == "" and config.boot.initrd is None
    r = config.runtime
    assert r.seccomp and not r.freeze and not r.daemonize and not r.log_enabled
    assert r.name is None and r.api_channel is None and r.pidfile is None


@pytest.mark.parametrize(("args", "cpus"), [
    (["-smp", "2"], 2), (["-smp", "cpus=4"], 4), (["-smp", "1"], 1), (["-smp", "254"], 254),
])
def test_smp(devices: DeviceRegistry, args: list[str], cpus: int) -> None:
    """-smp N and -smp cpus=N set vcpu_count, 1..254 inclusive."""
    assert load(devices, *args).machine.vcpus == cpus


@pytest.mark.parametrize(("value", "size"), [
    ("256M", 256 * MiB), ("256m", 256 * MiB), ("512M", 512 * MiB), ("1G", GiB), ("1g", GiB),
    ("512G", 512 * GiB), ("size=300M", 300 * MiB), (str(256 * MiB), 256 * MiB),
    ("262144K", 256 * MiB), ("3584M", 3584 * MiB),
])
def test_memory_size(devices: DeviceRegistry, value: str, size: int) -> None:
    """-m takes bytes or a K/M/G suffix in either case, with or without size=."""
    assert load(devices, "-m", value).machine.mem_size == size


def test_memory_options(devices: DeviceRegistry) -> None:
    """-mem-path and -machine's dump-guest-core / mem-share reach the machine config."""
    config = load(devices, "-mem-path", "/dev/hugepages", "-machine",
                  "microvm,dump-guest-core=off,mem-share=on")
    m = config.machine
    assert (m.mem_path, m.dump_guest_core, m.mem_share) == ("/dev/hugepages", False, True)
    assert config.document["machine-config"]["type"] == "MicroVm"


@pytest.mark.parametrize(("text", "value"), [
    ("on", True), ("off", False), ("true", True), ("false", False), ("ON", True), ("False", False),
])
def test_boolean_spellings(devices: DeviceRegistry, text: str, value: bool) -> None:
    """Booleans take on|off and true|false."""
    assert load(devices, "-machine", f"type=microvm,mem-share={text}").machine.mem_share is value


def test_boot_source(devices: DeviceRegistry) -> None:
    """-kernel, -initrd and a one-argument -append fill boot-source."""
    config = load(devices, "-kernel", "/k/vmlinux", "-initrd", "/k/initrd",
                  "-append", "console=ttyS0 reboot=k  panic=-1")
    assert config.boot.kernel == "/k/vmlinux"
    assert config.boot.initrd == "/k/initrd"
    assert config.boot.append == "console=ttyS0 reboot=k  panic=-1"


def test_append_several_words(devices: DeviceRegistry) -> None:
    """-append a b c takes every word up to the next option."""
    config = load(devices, "-append", "console=ttyS0", "reboot=k", "quiet", "-smp", "2")
    assert config.boot.append == "console=ttyS0 reboot=k quiet"
    assert config.machine.vcpus == 2


def test_append_empty_argument(devices: DeviceRegistry) -> None:
    """-append "" is an empty command line, not a missing value."""
    assert load(devices, "-append", "").boot.append == ""


def test_runtime_options(devices: DeviceRegistry) -> None:
    """Options without a JSON equivalent reach the runtime options."""
    config = load(devices, "-name", "vm1", "-api-channel", "unix:/run/vm1.sock", "-freeze",
                  "-daemonize", "-pidfile", "/run/vm1.pid", "-disable-seccomp", "-D",
                  "/tmp/vm1.log")
    r = config.runtime
    assert r.name == "vm1"
    assert r.api_channel == "/run/vm1.sock"
    assert r.freeze and r.daemonize and not r.seccomp
    assert r.pidfile == "/run/vm1.pid"
    assert r.log_enabled and r.log_path == "/tmp/vm1.log"
    assert "name" not in config.document and "D" not in config.document


def test_log_without_path(devices: DeviceRegistry) -> None:
    """-D followed by another option logs to stderr (no path)."""
    r = load(devices, "-D", "-smp", "2").runtime
    assert r.log_enabled and r.log_path is None


def test_double_dash_spelling(devices: DeviceRegistry) -> None:
    """--name is accepted as -name."""
    assert load(devices, "--name", "x", "--smp", "3").runtime.name == "x"


def test_iothreads_repeat(devices: DeviceRegistry) -> None:
    """-iothread repeats and keeps the order given."""
    config = load(devices, "-iothread", "id=a", "-iothread", "id=b")
    assert config.iothreads == ("a", "b")


def test_single_value_options_are_verbatim(devices: DeviceRegistry) -> None:
    """Options taking one value (-name, -mem-path, -kernel) keep commas and '=' as written."""
    config = load(devices, "-name", "a,b", "-mem-path", "/mnt/x,y=z", "-kernel", "/k/a,b")
    assert config.machine.mem_path == "/mnt/x,y=z"
    assert config.runtime.name == "a,b"
    assert config.boot.kernel == "/k/a,b"


def test_plugin_option_reaches_document(devices: DeviceRegistry) -> None:
    """A plugin's key=value option becomes its JSON key (a list for repeatable options)."""
    config = load(devices, "-widget", "id=w1,size=3,fast=on", "-widget", "id=w2", "-gizmo",
                  "id=g,level=7")
    assert config.devices("widget") == [{"widget_id": "w1", "size": 3, "fast": True},
                                        {"widget_id": "w2"}]
    assert config.devices("gizmo") == [{"gizmo_id": "g", "level": 7}]


# -- the JSON file and the merge -------------------------------------------------------


def write(tmp_path: Path, document: dict[str, Any]) -> str:
    """Write ``document`` as a config file."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_json_file_alone(devices: DeviceRegistry, tmp_path: Path) -> None:
    """A config file with the StratoVirt keys configures the VM without command-line help."""
    path = write(tmp_path, {
        "boot-source": {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0",
                        "initrd_fs_path": "/k/initrd"},
        "machine-config": {"type": "MicroVm", "vcpu_count": 2, "mem_size": 512 * MiB,
                           "mem_path": "/dev/hugepages", "dump_guest_core": False,
                           "mem_share": True},
        "iothread": [{"id": "io0"}],
    })
    config = load_config(["-config", path], devices)
    assert (config.machine.vcpus, config.machine.mem_size) == (2, 512 * MiB)
    assert config.machine.mem_path == "/dev/hugepages"
    assert not config.machine.dump_guest_core and config.machine.mem_share
    assert (config.boot.kernel, config.boot.append, config.boot.initrd) == (
        "/k/vmlinux", "console=ttyS0", "/k/initrd")
    assert config.iothreads == ("io0",)


def test_command_line_overrides_file(devices: DeviceRegistry, tmp_path: Path) -> None:
    """-smp 1 beats the file's vcpu_count 2; keys the command line leaves alone survive."""
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/k/vmlinux"},
                            "machine-config": {"vcpu_count": 2, "mem_size": 512 * MiB}})
    config = load_config(["-config", path, "-smp", "1"], devices)
    assert config.machine.vcpus == 1
    assert config.machine.mem_size == 512 * MiB
    assert config.boot.kernel == "/k/vmlinux"


def test_command_line_wins_whatever_the_order(devices: DeviceRegistry, tmp_path: Path) -> None:
    """The command line wins even when -config comes after the option."""
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/f", "boot_args": "file"}})
    config = load_config(["-append", "cmd", "line", "-config", path], devices)
    assert config.boot.append == "cmd line"
    assert config.boot.kernel == "/f"


def test_list_items_merged_by_id(devices: DeviceRegistry, tmp_path: Path) -> None:
    """A command-line item replaces the file's item with the same id; others are kept."""
    path = write(tmp_path, {
        "boot-source": {"kernel_image_path": "/k"},
        "widget": [{"widget_id": "w1", "size": 1, "fast": True}, {"widget_id": "w2", "size": 2}],
        "iothread": [{"id": "a"}],
    })
    config = load_config(["-config", path, "-widget", "id=w1,size=9", "-widget", "id=w3",
                          "-iothread", "id=b"], devices)
    assert config.devices("widget") == [{"widget_id": "w1", "size": 9}, {"widget_id": "w2",
                                         "size": 2}, {"widget_id": "w3"}]
    assert config.iothreads == ("a", "b")


def test_single_device_merged_key_by_key(devices: DeviceRegistry, tmp_path: Path) -> None:
    """A one-per-VM device from the file is merged with the command line key by key."""
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/k"},
                            "gizmo": {"gizmo_id": "g", "level": 1}})
    config = load_config(["-config", path, "-gizmo", "id=g,level=5"], devices)
    assert config.devices("gizmo") == [{"gizmo_id": "g", "level": 5}]


def test_merge_does_not_modify_the_file_document() -> None:
    """merge() builds a new document: the file's lists and objects are not mutated."""
    file_doc: dict[str, Any] = {"iothread": [{"id": "a"}], "machine-config": {"vcpu_count": 2}}
    merged = merge(file_doc, {"iothread": [{"id": "b"}], "machine-config": {"vcpu_count": 1}},
                   {})
    assert merged["machine-config"] == {"vcpu_count": 1}
    assert file_doc == {"iothread": [{"id": "a"}], "machine-config": {"vcpu_count": 2}}


def test_device_iothread_defined_in_file(devices: DeviceRegistry, tmp_path: Path) -> None:
    """A command-line device may name an iothread the file defines."""
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/k"}, "iothread": [{"id": "a"}]})
    config = load_config(["-config", path, "-widget", "id=w,iothread=a"], devices)
    assert config.devices("widget") == [{"widget_id": "w", "iothread": "a"}]


def test_device_iothread_undefined(devices: DeviceRegistry, tmp_path: Path) -> None:
    """A device naming an undefined iothread is refused, naming the option or the file."""
    with pytest.raises(ConfigError, match="-widget iothread: iothread 'nope' is not defined"):
        load(devices, "-iothread", "id=a", "-widget", "id=w,iothread=nope")
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/k"},
                            "widget": [{"widget_id": "w", "iothread": "gone"}]})
    with pytest.raises(ConfigError, match=f"config file {path}.*'gone' is not defined"):
        load_config(["-config", path], devices)


def test_file_error_names_file_even_if_command_line_overrides(devices: DeviceRegistry,
                                                              tmp_path: Path) -> None:
    """The file is checked on its own: a bad file value is reported against the file."""
    path = write(tmp_path, {"machine-config": {"vcpu_count": 999}})
    with pytest.raises(ConfigError, match=r"config file .*vcpu_count: 999 is above"):
        load_config(["-kernel", "k", "-config", path, "-smp", "1"], devices)


def test_duplicate_id_between_file_and_kinds(devices: DeviceRegistry, tmp_path: Path) -> None:
    """An id used by a widget in the file and a gizmo on the command line is refused."""
    path = write(tmp_path, {"boot-source": {"kernel_image_path": "/k"},
                            "widget": [{"widget_id": "same"}]})
    with pytest.raises(ConfigError, match="duplicate id 'same'"):
        load_config(["-config", path, "-gizmo", "id=same"], devices)


def test_help_flag_parsed_before_validation(devices: DeviceRegistry) -> None:
    """-h sets the help flag without requiring a kernel."""
    assert parse_command_line(["-h"], devices).help
    assert parse_command_line(["--help"], devices).help


# -- --help ------------------------------------------------------------------------


def test_help_lists_core_and_plugin_options(run_cli: Callable[..., CliResult]) -> None:
    """--help lists every core option and, under the plugin's name, the plugin's options."""
    result = run_cli("--help")
    assert result.rc == 0 and result.err == ""
    for option in ("-config", "-name", "-machine", "-smp", "-m", "-mem-path", "-kernel",
                   "-append", "-initrd", "-iothread", "-api-channel", "-freeze", "-daemonize",
                   "-pidfile", "-disable-seccomp", "-D"):
        assert f"\n  {option} " in result.out, option
    plugin_part = result.out.split("From plugin widget:", 1)[1]
    assert "-widget id=ID[,size=N][,fast=on|off][,iothread=ID]" in plugin_part
    assert "-gizmo id=ID[,level=N]" in plugin_part


def test_help_without_plugins(run_cli: Callable[..., CliResult],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With no plugin installed, --help has no plugin section and no -widget."""
    from stratovmm import plugin as plugin_mod

    monkeypatch.setattr(plugin_mod, "discover", lambda *_args: {})
    result = run_cli("-h")
    assert result.rc == 0
    assert "From plugin" not in result.out and "-widget" not in result.out
    assert "-kernel PATH" in result.out


@pytest.mark.skipif(find_spec("stratovmm_serial") is None, reason="stratovmm-serial not installed")
def test_help_of_installed_plugins_in_a_process() -> None:
    """The real console script lists the installed serial plugin's -serial."""
    proc = subprocess.run([sys.executable, "-m", "stratovmm.cli", "--help"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0
    assert "From plugin serial:" in proc.stdout
    assert "-serial stdio" in proc.stdout


def test_layout_limits_match_stratovirt() -> None:
    """The limits the schema checks are StratoVirt v0.3's (``machine_config.rs``): 1..254
    vCPUs, 256M..512G."""
    assert (254, 256 * MiB, 512 * GiB) == (layout.MAX_VCPUS, layout.MIN_MEM, layout.MAX_MEM)
