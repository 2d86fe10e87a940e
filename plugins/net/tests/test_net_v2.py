"""StratoVirt 2.x's net spelling: ``-netdev tap,...`` (by name or inherited fds) and ``-device
virtio-net-device,netdev=ID`` joined to it, beside v0.3's ``-netdev id=...``."""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import stratovmm_net.plugin as plugin
from stratovmm_net import tap as tap_mod
from stratovmm_net.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF, Tap
from stratovmm_net.vhost import adopt_vhost_net

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


IFF_MULTI_QUEUE = 0x0100


def tap_queue(name: str, multi: bool = True) -> int:
    """A tun fd attached to (new, non-persistent) tap ``name``, multi-queue by default."""
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if multi else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    return fd


@pytest.fixture
def tap_name() -> Iterator[str]:
    """A fresh tap name; the test needs root and /dev/net/tun."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("making tap devices needs root and /dev/net/tun")
    yield "sv2" + secrets.token_hex(4)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_other_queues_of_an_inherited_tap_are_detached(tap_name: str) -> None:
    """fds=A:B on a multi-queue tap: A is served, B is detached from the tap and closed;
    the tap lives on with A (a detached queue takes no frames)."""
    first, second = tap_queue(tap_name), tap_queue(tap_name)
    tap = Tap.from_fd(first, "-netdev tap fds")
    try:
        tap_mod.detach_queues(tap, [second], "-netdev tap fds")
        assert not fd_is_open(second)
        assert os.path.exists(f"/sys/class/net/{tap_name}")
    finally:
        tap.close()


def test_queues_of_another_tap_or_a_single_queue_tap_are_refused(tap_name: str) -> None:
    """A queue fd of another tap, a non-tap fd and a second fd of a single-queue tap are
    refused, naming the option and the fd."""
    first, other = tap_queue(tap_name), tap_queue(tap_name + "x")
    single = tap_queue(tap_name + "s", multi=False)
    read_end, write_end = os.pipe()
    tap, again = Tap.from_fd(first, "-netdev tap fds"), -1
    try:
        with pytest.raises(ConfigError, match=f"fds: fd {other} is a queue of tap"):
            tap_mod.detach_queues(tap, [other], "-netdev tap fds")
        with pytest.raises(ConfigError, match=f"fds: fd {read_end} is not an attached tap fd"):
            tap_mod.detach_queues(tap, [read_end], "-netdev tap fds")
        lone, again = Tap.from_fd(single, "-netdev tap fds"), os.dup(single)
        with pytest.raises(ConfigError, match=f"fd {again}: tap .* is not multi-queue"):
            tap_mod.detach_queues(lone, [again], "-netdev tap fds")
        lone.close()
    finally:
        tap.close()
        for fd in (other, again, read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_inherited_vhostfd_that_is_not_vhost_net_is_refused() -> None:
    """vhostfd= naming an fd that is not /dev/vhost-net is refused, naming it."""
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ConfigError, match=f"vhostfd: fd {read_end} is not a usable"
                                              " vhost-net fd"):
            adopt_vhost_net(read_end, "-netdev tap vhostfd")
    finally:
        os.close(read_end)
        os.close(write_end)
