"""StratoVirt 2.x's spellings of the core's options beside v0.3's: -qmp, -mon with a socket
-chardev, -chardev back ends, -object iothread, bare -m in MiB, -smp topology, -machine's
and -accel's kvm, and the QEMU options 2.x accepts and ignores; each refusal names the option
and the reason, and the command exits 2."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from clirun import CliResult

from stratovmm.config.load import load_config, parse_command_line
from stratovmm.errors import ConfigError
from stratovmm.registry import DeviceRegistry

MiB, GiB = 1 << 20, 1 << 30


def qmp_path(devices: DeviceRegistry, *argv: str) -> str | None:
    return load_config(["-kernel", "k", *argv], devices).runtime.api_channel


@pytest.mark.parametrize("argv", [
    ["-qmp", "unix:/run/vm/qmp.sock,server,nowait"],
    ["-qmp", "unix:/run/vm/qmp.sock,server=on,wait=off"],
    ["-api-channel", "unix:/run/vm/qmp.sock,server,nowait"],
    ["-mon", "chardev=qmp0,mode=control",
     "-chardev", "socket,id=qmp0,path=/run/vm/qmp.sock,server,nowait"],
    ["-chardev", "socket,id=qmp0,path=/run/vm/qmp.sock,server=on,nowait=on",
     "-mon", "chardev=qmp0,id=monitor,mode=control"],
])
def test_qmp_socket_spellings(devices: DeviceRegistry, argv: list[str]) -> None:
    """-qmp, -api-channel and -mon over a socket -chardev (either order) all give the QMP
    socket the path before the first comma."""
    assert qmp_path(devices, *argv) == "/run/vm/qmp.sock"


@pytest.mark.parametrize(("argv", "needle"), [
    (["-qmp", "unix:/tmp/q.sock"], "-qmp: server is needed"),
    (["-qmp", "unix:/tmp/q.sock,server"], "-qmp: nowait is needed"),
    (["-qmp", "tcp:127.0.0.1:4444,server,nowait"], "-qmp: .* is not unix:PATH"),
    (["-qmp", "unix:/a,server,nowait", "-api-channel", "unix:/b"],
     "a second QMP socket .* give one of"),
    (["-mon", "chardev=c0,mode=control"], "-mon: no -chardev with id 'c0'"),
    (["-mon", "chardev=c0,mode=readline", "-chardev", "socket,id=c0,path=/a,server,nowait"],
     "-mon: mode='readline': must be one of control"),
    (["-mon", "chardev=c0,mode=control", "-chardev", "stdio,id=c0"],
     "-mon: chardev 'c0' is stdio; QMP needs a socket"),
    (["-mon", "chardev=c0,mode=control", "-chardev", "socket,id=c0,path=/a,server"],
     "-mon: chardev 'c0' needs both server and nowait"),
    (["-mon", "mode=control"], "-mon: missing chardev="),
])
def test_qmp_socket_refusals(devices: DeviceRegistry, argv: list[str], needle: str) -> None:
    """A -qmp without server,nowait (2.x's check), a non-unix -qmp, two QMP sockets, and a
    -mon whose chardev is missing, not a listening socket or not in control mode are
    refused, naming the option."""
    with pytest.raises(ConfigError, match=needle):
        load_config(["-kernel", "k", *argv], devices)


@pytest.mark.parametrize(("argv", "needle"), [
    (["-chardev", "serial,id=c0,path=/dev/ttyS0"], r"-chardev: unknown type 'serial'"),
    (["-chardev", "id=c0,path=/a"], r"-chardev: the type must come first"),
    (["-chardev", "socket,id=c0"], r"-chardev socket: missing path="),
    (["-chardev", "file,path=/a"], r"-chardev file: missing id="),
    (["-chardev", "stdio,id=c0", "-chardev", "pty,id=c0"], r"-chardev pty: duplicate id 'c0'"),
    (["-chardev", "socket,id=c0,path=/a,server,reconnect=1"],
     r"-chardev socket: unknown key 'reconnect'"),
    (["-chardev", "socket,id=c0,path=/a,server=maybe"], r"-chardev socket: server='maybe'"),
])
def test_chardev_refusals(devices: DeviceRegistry, argv: list[str], needle: str) -> None:
    """-chardev needs a known back-end word first, its required keys and unique ids."""
    with pytest.raises(ConfigError, match=needle):
        parse_command_line(argv, devices)


def test_chardevs_are_held_by_id(devices: DeviceRegistry) -> None:
    """-chardev socket|stdio|file|pty are back ends held by id with their kind; none
    becomes a device by itself."""
    parsed = parse_command_line(["-chardev", "socket,id=s,path=/a,server,nowait",
                                 "-chardev", "stdio,id=o", "-chardev", "file,id=f,path=/log",
                                 "-chardev", "pty,id=p"], devices)
    assert parsed.backends["chardev"] == {
        "s": {"id": "s", "path": "/a", "server": True, "nowait": True, "kind": "socket"},
        "o": {"id": "o", "kind": "stdio"},
        "f": {"id": "f", "path": "/log", "kind": "file"},
        "p": {"id": "p", "kind": "pty"},
    }
    assert parsed.document == {}


def test_object_iothread_is_iothread(devices: DeviceRegistry) -> None:
    """-object iothread,id=X is -iothread id=X; the two spellings share one id space."""
    doc = load_config(["-kernel", "k", "-object", "iothread,id=io0", "-iothread", "id=io1"],
                      devices).document
    assert doc["iothread"] == [{"id": "io0"}, {"id": "io1"}]
    with pytest.raises(ConfigError, match="duplicate id 'io0'"):
        load_config(["-kernel", "k", "-object", "iothread,id=io0", "-iothread", "id=io0"],
                    devices)
    with pytest.raises(ConfigError, match="-object: unknown object type 'memory-backend-file'"):
        load_config(["-kernel", "k", "-object", "memory-backend-file,id=m"], devices)


@pytest.mark.parametrize(("value", "size"), [
    ("256", 256 * MiB), ("2048", 2 * GiB), ("524288", 512 * GiB),
    (str(256 * MiB), 256 * MiB), (str(GiB), GiB), ("1G", GiB), ("size=512", 512 * MiB),
    ("512m", 512 * MiB),
])
def test_bare_m_is_mib_or_bytes(devices: DeviceRegistry, value: str, size: int) -> None:
    """A bare -m up to 524288 is MiB (2.x, Kata's -m 2048); from 268435456 bytes (v0.3);
    suffixed sizes as before."""
    assert load_config(["-kernel", "k", "-m", value], devices).machine.mem_size == size


@pytest.mark.parametrize(("value", "needle"), [
    ("1000000", "a bare number is MiB up to 524288 .* and 1000000 is neither; add M or G"),
    ("128", "-m"),
    ("12x", "-m"),
])
def test_bare_m_refusals(devices: DeviceRegistry, value: str, needle: str) -> None:
    """A bare number valid neither as MiB nor as bytes, or too little RAM, is refused."""
    with pytest.raises(ConfigError, match=needle):
        load_config(["-kernel", "k", "-m", value], devices)


@pytest.mark.parametrize(("value", "vcpus"), [
    ("4", 4), ("cpus=2,maxcpus=4,sockets=1,cores=2,threads=2", 2),
    ("cpus=4,sockets=2,cores=2", 4), ("cpus=2,sockets=1,dies=1,clusters=1,cores=2,threads=1", 2),
    ("cpus=3,maxcpus=8", 3),
])
def test_smp_topology(devices: DeviceRegistry, value: str, vcpus: int) -> None:
    """2.x's -smp topology keys are read and checked; the VM gets cpus vCPUs."""
    assert load_config(["-kernel", "k", "-smp", value], devices).machine.vcpus == vcpus


@pytest.mark.parametrize(("value", "needle"), [
    ("cpus=4,maxcpus=2", "-smp: maxcpus=2 must be at least cpus"),
    ("cpus=2,sockets=2,cores=2,threads=2,maxcpus=4", "-smp: sockets \\* dies .* must equal"),
    ("cpus=2,cores=0", "-smp: cores=0 is below the minimum 1"),
    ("maxcpus=4", "-smp: missing cpus="),
    ("cpus=2,maxcpus=300", "at most 254"),
    ("cpus=2,books=1", "-smp: unknown key 'books'"),
])
def test_smp_topology_refusals(devices: DeviceRegistry, value: str, needle: str) -> None:
    """Topologies 2.x refuses are refused, naming -smp and the rule."""
    with pytest.raises(ConfigError, match=needle):
        load_config(["-kernel", "k", "-smp", value], devices)


def test_machine_and_accel_take_kvm(devices: DeviceRegistry) -> None:
    """-machine type=microvm,accel=kvm,usb=off and -accel kvm are accepted; another
    accelerator is refused."""
    config = load_config(["-kernel", "k", "-machine",
                          "type=microvm,dump-guest-core=off,accel=kvm,usb=off", "-accel", "kvm",
                          "-cpu", "host"], devices)
    assert config.machine.dump_guest_core is False
    with pytest.raises(ConfigError, match="-accel: accel='tcg': must be one of kvm"):
        load_config(["-kernel", "k", "-accel", "tcg"], devices)
    with pytest.raises(ConfigError, match="-machine: accel='hvf'"):
        load_config(["-kernel", "k", "-machine", "type=microvm,accel=hvf"], devices)


IGNORED = [["-uuid", "0b4a2c9f-2b0e-4d1e-9a57-3b1f0c7a1c11"], ["-no-user-config"],
           ["-nodefaults"], ["-nographic"], ["-sandbox", "on"], ["-msg", "timestamp=on"],
           ["-rtc", "base=utc"], ["-boot", "order=c"], ["-realtime", "mlock=off"],
           ["-overcommit", "mem-lock=off"], ["-display", "none"]]


def test_qemu_compat_options_are_ignored(devices: DeviceRegistry) -> None:
    """The QEMU options 2.x accepts and ignores are accepted, with or without a value, and
    change nothing in the configuration."""
    argv = [word for option in IGNORED for word in option]
    plain = load_config(["-kernel", "k"], devices)
    config = load_config(["-kernel", "k", *argv, "-nodefaults"], devices)
    assert config.document == plain.document
    assert config.runtime == plain.runtime


def test_errors_exit_2_naming_the_option(run_cli: Callable[..., CliResult]) -> None:
    """Through the command: a 2.x spelling used wrongly exits 2 with the option named."""
    for argv, needle in ((["-m", "1000000"], "-m"), (["-qmp", "unix:/tmp/x"], "-qmp"),
                         (["-chardev", "tty,id=c"], "-chardev"),
                         (["-smp", "cpus=4,maxcpus=2"], "-smp")):
        result = run_cli("-kernel", "k", *argv)
        assert result.rc == 2 and needle in result.err, (argv, result)


def test_help_lists_v2_options(run_cli: Callable[..., CliResult]) -> None:
    """--help shows the 2.x spellings the core contributes."""
    out = run_cli("--help").out
    for needle in ("-qmp unix:PATH,server,nowait", "-mon chardev=ID,mode=control",
                   "-chardev socket", "-chardev stdio", "-object iothread", "-accel kvm",
                   "-uuid", "-nodefaults"):
        assert needle in out, needle
