"""``-device vsock`` / ``"vsock"``: parsing, the one-device rule, the CID range, backend
choice and socket path errors — each a clear ConfigError naming the option."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stratovmm_vsock import paths, plugin
from stratovmm_vsock import vhost as vhost_mod
from stratovmm_vsock.device import VsockDevice
from stratovmm_vsock.vhost import RUNTIME_IOCTLS, VhostVsockDevice

from stratovmm.api import ConfigError, EventLoop, RuntimeOptions, SeccompRules, VhostBackend
from stratovmm.testing.config import parse_config

PLUGINS = {"vsock": plugin}
RUNTIME = RuntimeOptions()


def parse(*argv: str) -> dict[str, Any]:
    """The merged document for ``argv``, through the parser, the schema and the plugin's
    ``vmm_check_config``."""
    return parse_config(["-kernel", "/vmlinux", *argv], PLUGINS).document


def test_cmdline_fills_the_json_item() -> None:
    """``-device vsock,id=,guest-cid=,uds-path=`` lands in ``"vsock"`` with JSON names."""
    document = parse("-device", "vsock,id=v0,guest-cid=4294967294,uds-path=/run/v.sock")
    assert document["vsock"] == {"vsock_id": "v0", "guest_cid": 2**32 - 2,
                                 "uds_path": "/run/v.sock"}


def test_json_file_item(tmp_path: Path) -> None:
    """The JSON key ``"vsock"`` with ``vsock_id``/``guest_cid``/``uds_path`` is accepted."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/vmlinux"},
                                "vsock": {"vsock_id": "v0", "guest_cid": 3,
                                          "uds_path": "/tmp/v.sock"}}))
    assert parse("-config", str(path))["vsock"]["guest_cid"] == 3


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
def test_bad_cmdline_is_refused(argv: list[str], needle: str) -> None:
    """Out-of-range CIDs, missing keys and a second vsock are refused with the option named."""
    with pytest.raises(ConfigError) as err:
        parse("-device", *argv)
    assert needle in str(err.value)


def test_json_list_of_vsocks_is_refused(tmp_path: Path) -> None:
    """At most one vsock in the JSON file too: ``"vsock"`` is an object, not a list."""
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/vmlinux"},
                                "vsock": [{"vsock_id": "a", "guest_cid": 3},
                                          {"vsock_id": "b", "guest_cid": 4}]}))
    with pytest.raises(ConfigError, match="vsock"):
        parse("-config", str(path))


def test_guide_line_without_uds_path_is_accepted(tmp_path: Path) -> None:
    """StratoVirt's own ``-device vsock,id=vsock0,guest-cid=3`` and its JSON (no uds_path)
    pass the parser and the plugin's checks, whatever the host has."""
    assert parse("-device", "vsock,id=vsock0,guest-cid=3")["vsock"] == {
        "vsock_id": "vsock0", "guest_cid": 3}
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/vmlinux"},
                                "vsock": {"vsock_id": "vsock0", "guest_cid": 3}}))
    assert parse("-config", str(path))["vsock"]["guest_cid"] == 3


@pytest.mark.parametrize(("path", "needle"), [
    ("/nonexistent-dir/v.sock", "does not exist"),
    ("/tmp/" + "x" * 100, "longer than 107 bytes"),
])
def test_unusable_socket_paths_are_refused(path: str, needle: str) -> None:
    """A socket path in a missing directory or too long for PATH_<port> is refused early."""
    with pytest.raises(ConfigError, match=rf"uds-path.*{needle}"):
        plugin.vmm_check_config({"vsock": {"vsock_id": "v", "guest_cid": 3,
                                           "uds_path": path}}, RUNTIME)


class FakeContext:
    """The parts of ``BuildContext`` the factory uses."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.main_loop = EventLoop("ctx")


def build(ctx: FakeContext, item: dict[str, Any]) -> VsockDevice | VhostVsockDevice:
    """The device the plugin's factory returns for ``item``."""
    vm: Any = ctx
    return plugin.create_vsock(vm, item)


def create(path: str) -> VsockDevice | VhostVsockDevice:
    return build(FakeContext(), {"vsock_id": "v0", "guest_cid": 3, "uds_path": path})


def test_factory_listens_and_removes_the_socket_on_close(tmp_path: Path) -> None:
    """The factory builds a VsockDevice listening at uds_path; close() removes the file."""
    path = str(tmp_path / "v.sock")
    device = create(path)
    assert isinstance(device, VsockDevice) and device.id == "v0"
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
    create(path).close()
    Path(path).write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        create(path)


def test_unwritable_socket_path_is_refused() -> None:
    """bind() failing (here: /proc refuses new files even to root) is a ConfigError."""
    with pytest.raises(ConfigError, match=r"-device vsock uds-path: cannot listen on /proc/"):
        create("/proc/vsock.sock")


def test_seccomp_rules_cover_runtime_connects() -> None:
    """Guest-initiated streams need socket/connect after the filter is on."""
    rules = SeccompRules()
    plugin.vmm_seccomp_rules(rules, {"vsock": {"vsock_id": "v0", "guest_cid": 3}})
    assert {"socket", "connect", "shutdown"} <= set(rules.syscalls)


# -- without uds-path: vhost-vsock, else the bridge at the default path ---------------------------


@pytest.fixture
def no_vhost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A host without /dev/vhost-vsock whose runtime directory is a short directory under
    /tmp (pytest's ``tmp_path`` can be too long for ``PATH_<port>`` to fit a unix socket
    address)."""
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(tmp_path / "no-vhost-vsock"))
    run = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    yield run / "stratovmm"
    shutil.rmtree(run, ignore_errors=True)


def test_without_vhost_the_bridge_listens_at_the_default_path(
        no_vhost: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No /dev/vhost-vsock and no uds-path: the bridge listens at RUNDIR/NAME.vsock, in a
    0700 directory it made, and the log names the path."""
    with caplog.at_level(logging.WARNING):
        device = build(FakeContext(name="vm1"), {"vsock_id": "vsock0", "guest_cid": 3})
    path = no_vhost / "vm1.vsock"
    assert isinstance(device, VsockDevice) and device.bridge.path == str(path)
    assert stat.S_IMODE(os.stat(no_vhost).st_mode) == 0o700
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(path))
    probe.close()
    assert f"CONNECT <port> on {path} reaches the guest" in caplog.text
    device.close()
    assert not path.exists()


@pytest.mark.parametrize(("name", "stem"), [
    ("vm1", "vm1"), ("web-01.prod", "web-01.prod"), (None, "PID"), ("../evil", "PID"),
    (".hidden", "PID"), ("a/b", "PID"), ("", "PID"),
])
def test_default_path_is_named_after_the_vm_or_the_pid(no_vhost: Path, name: str | None,
                                                       stem: str) -> None:
    """-name gives NAME.vsock when it is a plain file name; otherwise the pid does."""
    expected = str(os.getpid()) if stem == "PID" else stem
    assert paths.default_socket_path(name) == str(no_vhost / f"{expected}.vsock")


def test_runtime_dir_for_root_and_for_other_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without XDG_RUNTIME_DIR: /run/stratovmm for root, /tmp/stratovmm-UID for others."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert paths.runtime_dir() == "/run/stratovmm"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert paths.runtime_dir() == "/tmp/stratovmm-1000"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert paths.runtime_dir() == "/run/user/1000/stratovmm"


def test_a_runtime_dir_others_could_write_is_refused(no_vhost: Path) -> None:
    """A default directory writable by others, or a symlink there, is refused (someone else
    could plant the socket); the message names -device vsock."""
    no_vhost.mkdir(mode=0o700)
    no_vhost.chmod(0o777)
    with pytest.raises(ConfigError, match=r"-device vsock: .* writable by nobody else"):
        build(FakeContext("vm1"), {"vsock_id": "v0", "guest_cid": 3})
    no_vhost.rmdir()
    no_vhost.symlink_to("/tmp")
    with pytest.raises(ConfigError, match=r"-device vsock: .* is not a directory"):
        build(FakeContext("vm1"), {"vsock_id": "v0", "guest_cid": 3})


def test_two_vms_with_one_name_are_told_apart(no_vhost: Path) -> None:
    """A second VM of the same -name finds the first one's socket live: a clear refusal."""
    first = build(FakeContext("twin"), {"vsock_id": "v0", "guest_cid": 3})
    with pytest.raises(ConfigError, match=r"cannot listen on .*twin\.vsock: another process"):
        build(FakeContext("twin"), {"vsock_id": "v0", "guest_cid": 4})
    first.close()


def test_with_vhost_vsock_the_factory_uses_it(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """Where /dev/vhost-vsock exists and no uds-path is given, the device is vhost-vsock
    (opened with the guest's CID) and seccomp lets its ring hand-over through; uds-path
    still selects the bridge."""
    fake = tmp_path / "vhost-vsock"
    fake.touch()
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(fake))
    opened: list[tuple[int, str]] = []

    def open_recorded(cid: int, option: str) -> VhostBackend:
        opened.append((cid, option))
        return VhostBackend(os.open(fake, os.O_RDWR), 1 << 32, str(fake),
                            lambda fd, request, arg=b"": arg)

    monkeypatch.setattr(vhost_mod, "open_vhost_vsock", open_recorded)
    item: dict[str, Any] = {"vsock_id": "v0", "guest_cid": 7}
    device = build(FakeContext("vm1"), item)
    assert isinstance(device, VhostVsockDevice)
    assert opened == [(7, "-device vsock")]
    rules = SeccompRules()
    plugin.vmm_seccomp_rules(rules, {"vsock": item})
    assert set(RUNTIME_IOCTLS) <= set(rules.ioctls)
    device.close()
    device = create(str(tmp_path / "v.sock"))
    assert isinstance(device, VsockDevice)
    device.close()
    rules = SeccompRules()
    plugin.vmm_seccomp_rules(rules, {"vsock": {**item, "uds_path": str(tmp_path / "v.sock")}})
    assert not set(RUNTIME_IOCTLS) & set(rules.ioctls)
