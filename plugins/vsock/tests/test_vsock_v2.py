"""StratoVirt 2.x's ``-device vhost-vsock-device``: the kernel's vhost-vsock only, refused
clearly where the host has no ``/dev/vhost-vsock``."""

from __future__ import annotations

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
    """With /dev/vhost-vsock present it is the vsock item (no uds_path: vhost serves it);
    an inherited vhostfd= is refused, naming it."""
    fake = tmp_path / "vhost-vsock"
    fake.touch()
    monkeypatch.setattr(plugin, "VHOST_VSOCK_PATH", str(fake))
    doc = parse_config(["-kernel", "/boot/none", *KATA], PLUGINS).document
    assert doc["vsock"] == {"vsock_id": "vsock-id", "guest_cid": 3}
    with pytest.raises(ConfigError, match="vhost-vsock-device: vhostfd=: an inherited"):
        parse_config(["-kernel", "/boot/none", "-device",
                      "vhost-vsock-device,id=v,guest-cid=3,vhostfd=3"], PLUGINS)


def test_help_shows_both_forms() -> None:
    """--help lists -device vsock and -device vhost-vsock-device."""
    text = help_text(PLUGINS)
    assert "-device vsock,id=ID,guest-cid=N" in text
    assert "-device vhost-vsock-device,id=ID,guest-cid=N" in text
