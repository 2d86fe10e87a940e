"""Hot-replace seen by the Linux guest: blockdev-add + device_add fill a reserved
virtio-mmio slot (the guest's disk grows from 0 to the image's size and reads the
image's bytes), device_del empties it (size 0 again) and emits DEVICE_DELETED."""

from __future__ import annotations

import re
from pathlib import Path

from qmp_vm import VmProcess

from stratovmm.testing.guest import GUEST_TIMEOUT, boot_args

GUEST = r"""
echo "BEFORE size=$(cat /sys/block/vda/size)"
while [ "$(cat /sys/block/vda/size)" = 0 ]; do sleep 0.2; done
echo "PLUGGED size=$(cat /sys/block/vda/size) serial=$(cat /sys/block/vda/serial)"
echo "DATA=$(head -c 24 /dev/vda)"
echo "WAITING-UNPLUG"
while [ "$(cat /sys/block/vda/size)" != 0 ]; do sleep 0.2; done
echo "UNPLUGGED size=$(cat /sys/block/vda/size)"
"""


def test_drive_appears_and_goes_in_the_guest(guest: Path, boot_lock: None,
                                             tmp_path: Path) -> None:
    """The guest sees a hot-added drive's size, serial and data, and sees it removed."""
    image = tmp_path / "hot.img"
    image.write_bytes(b"HOT-REPLACED-DRIVE-BYTES".ljust(4 << 20, b"\0"))
    vm = VmProcess(boot_args(guest, GUEST, smp=2, mem="256M"))
    try:
        assert vm.wait_stdout("BEFORE size=0", GUEST_TIMEOUT), vm.stdout + vm.stderr
        with vm.client() as qmp:
            added = qmp.command("blockdev-add", {
                "node-name": "drive-hot", "file": {"driver": "file", "filename": str(image)},
                "cache": {"direct": False}, "read-only": False})
            assert added.get("return") == {}, added
            plugged = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "drive-hot",
                                                 "addr": "0x0", "serial": "HOTSER"})
            assert plugged.get("return") == {}, plugged
            assert vm.wait_stdout("WAITING-UNPLUG", 60), vm.stdout[-2000:]
            busy = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "other",
                                              "addr": "0x0"})
            assert busy["error"]["class"] == "GenericError"
            removed = qmp.command("device_del", {"id": "drive-hot"})
            assert removed.get("return") == {}, removed
            event = qmp.wait_event("DEVICE_DELETED", 10)
            assert event["data"]["device"] == "drive-hot"
            assert vm.wait_stdout("UNPLUGGED", 60), vm.stdout[-2000:]
            missing = qmp.command("device_del", {"id": "drive-hot"})
            assert missing["error"]["class"] == "DeviceNotFound"
        assert vm.wait() == 0
    finally:
        vm.close()
    out = vm.stdout.replace("\r", "")
    assert re.search(r"PLUGGED size=8192 serial=HOTSER", out), out[-2000:]
    assert "DATA=HOT-REPLACED-DRIVE-BYTES" in out
    assert "UNPLUGGED size=0" in out
