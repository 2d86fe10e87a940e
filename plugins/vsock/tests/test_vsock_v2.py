"""StratoVirt 2.x's ``-device vhost-vsock-device``: the kernel's vhost-vsock only, through an
inherited ``vhostfd=`` or ``/dev/vhost-vsock``, refused clearly where the host has neither."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import stratovmm_vsock.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"vsock": plugin}
KATA = ["-device", "vhost-vsock-device,id=vsock-id,guest-cid=3"]


def test_refused_without_dev_vhost_vsock(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """Without /dev/vhost-vsock, Kata's -device vhost-vsock-device is refused, naming the
    option, the missing device and the userspace alternative."""
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(tmp_path / "vhost-vsock"))
    with pytest.raises(ConfigError, match=r"-device vhost-vsock-device: .*vhost-vsock does"
                                          r" not exist on this host.*-device vsock,id=ID"):
        parse_config(["-kernel", "/boot/none", *KATA], PLUGINS)


def test_vhost_host_makes_the_vsock_item(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """With /dev/vhost-vsock present it is the vsock item (no uds_path: vhost serves it)."""
    fake = tmp_path / "vhost-vsock"
    fake.touch()
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(fake))
    doc = parse_config(["-kernel", "/boot/none", *KATA], PLUGINS).document
    assert doc["vsock"] == {"vsock_id": "vsock-id", "guest_cid": 3}


def test_vhostfd_is_the_backend_with_or_without_the_device(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """An inherited vhostfd= makes a vsock item that vhost serves through that fd, even on a
    host without /dev/vhost-vsock (the parent opened it)."""
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(tmp_path / "vhost-vsock"))
    fd = os.open("/dev/null", os.O_RDWR)       # a character device, as /dev/vhost-vsock is
    try:
        doc = parse_config(["-kernel", "/boot/none", "-device",
                            f"vhost-vsock-device,id=v,guest-cid=3,vhostfd={fd}"],
                           PLUGINS).document
    finally:
        os.close(fd)
    assert doc["vsock"] == {"vsock_id": "v", "guest_cid": 3, "vhost_fd": fd}
    assert plugin.uses_vhost(doc["vsock"])


def test_a_vhostfd_not_open_or_not_a_device_is_refused(tmp_path: Path) -> None:
    """vhostfd= naming a fd the parent did not pass, or a regular file's, is refused at
    parse time, naming vhostfd and the reason."""
    fd = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(ConfigError, match=f"vhost-vsock-device: vhostfd={fd}: fd {fd} is"
                                              " not a character device"):
            parse_config(["-kernel", "/boot/none", "-device",
                          f"vhost-vsock-device,id=v,guest-cid=3,vhostfd={fd}"], PLUGINS)
    finally:
        os.close(fd)
    with pytest.raises(ConfigError, match=f"vhostfd={fd}: fd {fd} is not open here"):
        parse_config(["-kernel", "/boot/none", "-device",
                      f"vhost-vsock-device,id=v,guest-cid=3,vhostfd={fd}"], PLUGINS)


def test_vhost_fd_and_uds_path_together_are_refused(tmp_path: Path) -> None:
    """A JSON vsock with both vhost_fd and uds_path names two backends: refused."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"vsock": {"vsock_id": "v", "guest_cid": 3, "vhost_fd": 7,
                                            "uds_path": str(tmp_path / "v.sock")}}))
    with pytest.raises(ConfigError, match=r"give uds_path .* or vhost_fd .*, not both"):
        parse_config(["-kernel", "/boot/none", "-config", str(config)], PLUGINS)


def test_help_shows_both_forms() -> None:
    """--help lists -device vsock and -device vhost-vsock-device."""
    text = help_text(PLUGINS)
    assert "-device vsock,id=ID,guest-cid=N" in text
    assert "-device vhost-vsock-device,id=ID,guest-cid=N" in text
