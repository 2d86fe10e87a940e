"""StratoVirt 2.x's block spelling: ``-drive`` with 2.x's keys and ``-device
virtio-blk-device,drive=ID`` joined to it, beside v0.3's ``-drive`` alone."""

from __future__ import annotations

from typing import Any

import pytest
import stratovmm_blk.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"blk": plugin}


def drives(*argv: str) -> list[dict[str, Any]]:
    doc = parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document
    items: list[dict[str, Any]] = doc.get("drive", [])
    return items


def test_kata_rootfs_drive_and_device() -> None:
    """Kata's rootfs (-drive id=rootfs,...,readonly=on,direct=off + -device
    virtio-blk-device,drive=rootfs,id=virtio-blk0) is one disk named by the device's id."""
    assert drives("-drive", "id=rootfs,file=/img,readonly=on,direct=off",
                  "-device", "virtio-blk-device,drive=rootfs,id=virtio-blk0") == [
        {"drive_id": "virtio-blk0", "path_on_host": "/img", "read_only": True, "direct": False}]


def test_v2_drive_keys_and_device_keys() -> None:
    """2.x's -drive keys are read (throttling.iops-total is iops; if, format, aio, discard,
    detect-zeroes accepted); the device's serial and iothread fill the disk; a -device
    before its -drive works; disks keep the order their devices were asked for."""
    items = drives(
        "-device", "virtio-blk-device,drive=d1,id=blk1,serial=S1,iothread=io,bootindex=1",
        "-drive", "id=d0,file=/a,if=none,format=raw,aio=native,discard=unmap,"
                  "detect-zeroes=off,throttling.iops-total=200",
        "-drive", "id=d1,file=/b", "-device", "virtio-blk-device,drive=d0,id=blk0",
        "-iothread", "id=io")
    assert items == [
        {"drive_id": "blk1", "path_on_host": "/b", "serial_num": "S1", "iothread": "io"},
        {"drive_id": "blk0", "path_on_host": "/a", "iops": 200},
    ]


def test_drive_no_device_names_is_a_disk() -> None:
    """A -drive that no -device names is still a disk, as in v0.3."""
    assert drives("-drive", "id=d0,file=/a", "-drive", "id=d1,file=/b",
                  "-device", "virtio-blk-device,drive=d1,id=blk1") == [
        {"drive_id": "d0", "path_on_host": "/a"}, {"drive_id": "blk1", "path_on_host": "/b"}]


@pytest.mark.parametrize(("argv", "needle"), [
    (["-device", "virtio-blk-device,drive=nope,id=b"],
     "-device virtio-blk-device: no -drive with id 'nope'"),
    (["-drive", "id=d,file=/a", "-device", "virtio-blk-device,drive=d,id=b1",
      "-device", "virtio-blk-device,drive=d,id=b2"], "'d' is already used by"),
    (["-drive", "id=d,file=/a", "-device", "virtio-blk-device,id=b"], "missing drive="),
    (["-drive", "id=d,file=/a", "-drive", "id=e,file=/b",
      "-device", "virtio-blk-device,drive=d,id=e"], "duplicate id 'e'"),
    (["-drive", "id=d,file=/a,format=qcow2"], "-drive: format='qcow2': must be one of raw"),
    (["-drive", "id=d,file=/a,iops=1,throttling.iops-total=2"],
     "iops and throttling.iops-total both set iops"),
    (["-drive", "id=d,file=/a", "-device", "virtio-blk-device,drive=d,id=b,scsi=on"],
     "-device virtio-blk-device: unknown key 'scsi'"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """A device naming a missing or used drive, a missing drive=, clashing ids, an image
    format other than raw and a doubled iops are refused, naming the option."""
    with pytest.raises(ConfigError, match=needle):
        drives(*argv)


def test_help_shows_both_forms() -> None:
    """--help lists the v0.3 -drive and 2.x's -device virtio-blk-device."""
    text = help_text(PLUGINS)
    assert "-drive id=ID,file=PATH" in text
    assert "-device virtio-blk-device,drive=ID,id=ID" in text
