"""StratoVirt 2.x's net spelling: ``-netdev tap,...`` (by name or inherited fds) and ``-device
virtio-net-device,netdev=ID`` joined to it, beside v0.3's ``-netdev id=...``."""

from __future__ import annotations

from typing import Any

import pytest
import stratovmm_net.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"net": plugin}


def nets(*argv: str) -> list[dict[str, Any]]:
    doc = parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document
    items: list[dict[str, Any]] = doc.get("net", [])
    return items


def test_kata_tap_fds_and_device() -> None:
    """Kata's NIC (-netdev tap,id=eth0,fds=3:4 + -device virtio-net-device,netdev=eth0,
    id=eth0,mac=...) serves the first inherited fd and keeps the others to detach."""
    assert nets("-netdev", "tap,id=eth0,fds=3:4",
                "-device", "virtio-net-device,netdev=eth0,id=eth0,mac=02:42:ac:11:00:02") == [
        {"iface_id": "eth0", "tap_fd": 3, "tap_queue_fds": [4], "mac": "02:42:ac:11:00:02"}]


@pytest.mark.parametrize(("netdev", "item"), [
    ("tap,id=n0,ifname=tap0", {"iface_id": "n0", "host_dev_name": "tap0"}),
    ("tap,id=n0,fd=5", {"iface_id": "n0", "tap_fd": 5}),
    ("tap,id=n0,ifname=tap0,fd=5,queues=1",
     {"iface_id": "n0", "host_dev_name": "tap0", "tap_fd": 5}),
    ("tap,id=n0,fds=3,vhost=on,vhostfd=4",
     {"iface_id": "n0", "tap_fd": 3, "vhost_type": "vhost-kernel", "vhost_fd": 4}),
    ("tap,id=n0,ifname=tap0,vhost=off", {"iface_id": "n0", "host_dev_name": "tap0"}),
])
def test_tap_alone_is_a_nic(netdev: str, item: dict[str, Any]) -> None:
    """-netdev tap alone is a NIC, by interface name or inherited fd (which wins, as in
    2.x), with vhost and an inherited vhost-net fd."""
    assert nets("-netdev", netdev) == [item]


def test_device_id_mac_and_order() -> None:
    """The device's id and mac fill the NIC (id defaults to the netdev's); NICs keep
    -device order; the v0.3 form still works beside the 2.x one."""
    assert nets("-netdev", "tap,id=a,ifname=t1", "-netdev", "id=old,netdev=t0",
                "-device", "virtio-net-device,netdev=a,mac=52:54:00:00:00:01,iothread=io",
                "-iothread", "id=io") == [
        {"iface_id": "old", "host_dev_name": "t0"},
        {"iface_id": "a", "host_dev_name": "t1", "mac": "52:54:00:00:00:01", "iothread": "io"}]


@pytest.mark.parametrize(("argv", "needle"), [
    (["-netdev", "tap,id=n"], "-netdev tap: the tap is missing: give ifname=TAP, fd=N or fds"),
    (["-netdev", "tap,id=n,fd=3,fds=4:5"], "give fd= or fds=, not both"),
    (["-netdev", "tap,id=n,fd=3:4"], "fd= takes one fd"),
    (["-netdev", "tap,id=n,fds=3:3"], "fds='3:3': names one fd twice"),
    (["-netdev", "tap,id=n,fds=3:x"], "fds='3:x': is not a fd number"),
    (["-netdev", "tap,id=n,fd=2"], "-netdev tap fd: 2 is below the minimum 3"),
    (["-netdev", "tap,id=n,fd=3,vhostfd=4"], "vhostfd= needs vhost=on"),
    (["-netdev", "tap,id=n,fd=3,queues=17"], "queues=17 is not 1..16"),
    (["-netdev", "user,id=n"], "-netdev: unknown type 'user'"),
    (["-device", "virtio-net-device,netdev=n"], "no -netdev with id 'n'"),
    (["-netdev", "tap,id=n,fd=3", "-device", "virtio-net-device,netdev=n",
      "-device", "virtio-net-device,netdev=n,id=m"], "'n' is already used by"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """Missing or doubled taps, bad fd lists, fds 0-2, a vhostfd without vhost, too many
    queues, other netdev types and dangling or shared netdevs are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        nets(*argv)


def test_help_shows_both_forms() -> None:
    """--help lists v0.3's -netdev id=... and 2.x's -netdev tap + -device virtio-net-device."""
    text = help_text(PLUGINS)
    for needle in ("-netdev id=ID,netdev=TAP", "-netdev tap,id=ID,(ifname=TAP|fd=N|fds=N:M)",
                   "-device virtio-net-device,netdev=ID"):
        assert needle in text
