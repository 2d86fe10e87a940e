"""``-device vsock`` / ``"vsock"``: parsing, the one-device rule, the CID range, backend
choice and socket path errors — each a clear ConfigError naming the option."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from stratovmm_vsock import plugin
from stratovmm_vsock.device import VsockDevice

from stratovmm import cli
from stratovmm.config.load import load_config
from stratovmm.config.model import VmConfig, runtime_options
from stratovmm.errors import ConfigError
from stratovmm.eventloop import EventLoop
from stratovmm.plugin import PluginHost
from stratovmm.registry import DeviceRegistry

RUNTIME = runtime_options({})


@pytest.fixture
def devices() -> DeviceRegistry:
    """The core's options plus this plugin's."""
    return PluginHost({"vsock": plugin}).register(cli.core_registry()).devices


def parse(devices: DeviceRegistry, *argv: str) -> VmConfig:
    return load_config(["-kernel", "/vmlinux", *argv], devices)


def test_cmdline_fills_the_json_item(devices: DeviceRegistry) -> None:
    """``-device vsock,id=,guest-cid=,uds-path=`` lands in ``"vsock"`` with JSON names."""
    config = parse(devices, "-device", "vsock,id=v0,guest-cid=4294967294,uds-path=/run/v.sock")
    assert config.document["vsock"] == {"vsock_id": "v0", "guest_cid": 2**32 - 2,
                                        "uds_path": "/run/v.sock"}


def test_json_file_item(devices: DeviceRegistry, tmp_path: Path) -> None:
    """The JSON key ``"vsock"`` with ``vsock_id``/``guest_cid``/``uds_path`` is accepted."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/vmlinux"},
                                "vsock": {"vsock_id": "v0", "guest_cid": 3,
                                          "uds_path": "/tmp/v.sock"}}))
    config = load_config(["-config", str(path)], devices)
    assert config.document["vsock"]["guest_cid"] == 3


@pytest.mark.parametrize(("argv", "needle"), [
    (["vsock,id=v0,guest-cid=2"], "-device vsock guest-cid: 2 is below the minimum 3"),
    (["vsock,id=v0,guest-cid=4294967295"], "above the maximum 4294967294"),
    (["vsock,id=v0,guest-cid=-5"], "guest-cid"),
    (["vsock,id=v0,guest-cid=three"], "guest-cid"),
    (["vsock,id=v0"], "-device vsock: missing guest-cid="),
    (["vsock,guest-cid=3"], "-device vsock: missing id="),
    (["vsock,id=v0,guest-cid=3,port=9"], "unknown key 'port'"),
    (["vsock,id=v0,guest-cid=3", "-device", "vsock,id=v1,guest-cid=4"],
     "-device vsock: given twice (at most one is allowed)"),
    (["vhost-vsock-pci,id=v0"], "unknown device driver 'vhost-vsock-pci'"),
])
def test_bad_cmdline_is_refused(devices: DeviceRegistry, argv: list[str], needle: str) -> None:
    """Out-of-range CIDs, missing keys and a second vsock are refused with the option named."""
    with pytest.raises(ConfigError) as err:
        parse(devices, "-device", *argv)
    assert needle in str(err.value)


def test_json_list_of_vsocks_is_refused(devices: DeviceRegistry, tmp_path: Path) -> None:
    """At most one vsock in the JSON file too: ``"vsock"`` is an object, not a list."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/vmlinux"},
                                "vsock": [{"vsock_id": "a", "guest_cid": 3},
                                          {"vsock_id": "b", "guest_cid": 4}]}))
    with pytest.raises(ConfigError, match="vsock"):
        load_config(["-config", str(path)], devices)


def test_without_uds_path_and_without_vhost_is_refused() -> None:
    """No /dev/vhost-vsock here and no uds-path: the message says what to give."""
    if os.path.exists("/dev/vhost-vsock"):
        pytest.skip("this host has /dev/vhost-vsock")
    with pytest.raises(ConfigError, match=r"does not exist.*uds-path=PATH"):
        plugin.vmm_check_config({"vsock": {"vsock_id": "v0", "guest_cid": 3}}, RUNTIME)


def test_vhost_present_but_unimplemented_is_said_plainly(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /dev/vhost-vsock exists, the missing vhost backend is named, not faked."""
    fake = tmp_path / "vhost-vsock"
    fake.touch()
    monkeypatch.setattr(plugin, "VHOST_VSOCK", str(fake))
    with pytest.raises(ConfigError, match=r"not implemented.*uds-path=PATH"):
        plugin.vmm_check_config({"vsock": {"vsock_id": "v0", "guest_cid": 3}}, RUNTIME)


@pytest.mark.parametrize(("path", "needle"), [
    ("/nonexistent-dir/v.sock", "does not exist"),
    ("/tmp/" + "x" * 100, "too long"),
])
def test_unusable_socket_paths_are_refused(path: str, needle: str) -> None:
    """A socket path in a missing directory or too long for PATH_<port> is refused early."""
    with pytest.raises(ConfigError, match=rf"uds-path.*{needle}"):
        plugin.vmm_check_config({"vsock": {"vsock_id": "v", "guest_cid": 3,
                                           "uds_path": path}}, RUNTIME)


class FakeContext:
    """The parts of ``BuildContext`` the factory uses."""

    def __init__(self) -> None:
        self.main_loop = EventLoop("ctx")
        self.devices: dict[str, Any] = {}
        self.virtio: list[Any] = []

    def add_device(self, device_id: str, device: Any) -> None:
        if device_id in self.devices:
            raise ConfigError(f"duplicate device id {device_id!r}")
        self.devices[device_id] = device

    def add_virtio_device(self, device: Any, iothread: str | None = None) -> None:
        self.virtio.append(device)


def create(path: str) -> FakeContext:
    ctx = FakeContext()
    plugin.create_vsock(ctx, {"vsock_id": "v0", "guest_cid": 3,  # type: ignore[arg-type]
                              "uds_path": path})
    return ctx


def test_factory_listens_and_removes_the_socket_on_close(tmp_path: Path) -> None:
    """The factory attaches a VsockDevice listening at uds_path; close() removes the file."""
    path = str(tmp_path / "v.sock")
    ctx = create(path)
    device = ctx.devices["v0"]
    assert isinstance(device, VsockDevice) and ctx.virtio == [device]
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(path)
    probe.close()
    device.close()
    assert not os.path.exists(path)


def test_socket_path_in_use_or_not_a_socket_is_refused(tmp_path: Path) -> None:
    """A live listener or a regular file at uds_path is refused; a stale socket is reused."""
    path = str(tmp_path / "v.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    with pytest.raises(ConfigError, match=r"cannot listen.*another process"):
        create(path)
    live.close()                    # leaves a stale socket file behind
    create(path).devices["v0"].close()
    Path(path).write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        create(path)


def test_unwritable_socket_path_is_refused() -> None:
    """bind() failing (here: /proc refuses new files even to root) is a ConfigError."""
    with pytest.raises(ConfigError, match=r"-device vsock uds-path: cannot listen on /proc/"):
        create("/proc/vsock.sock")


def test_seccomp_rules_cover_runtime_connects() -> None:
    """Guest-initiated streams need socket/connect after the filter is on."""
    from stratovmm.registry import SeccompRules

    rules = SeccompRules()
    plugin.vmm_seccomp_rules(rules)
    assert {"socket", "connect", "shutdown"} <= set(rules.syscalls)
