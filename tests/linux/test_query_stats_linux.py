"""QMP query-stats while the Linux guest does I/O (one boot): the blk, rng and serial counters
move by what the guest did, read from outside while the guest is still running."""

from __future__ import annotations

import os
from pathlib import Path

from stratovmm.testing.guest import boot_args, boot_lock
from stratovmm.testing.vm import VmLauncher

READ_BLOCKS = 64                 # 4 KiB blocks the guest reads from vda
HWRNG_BYTES = 2048

GUEST_SCRIPT = f"""
dd if=/dev/vda of=/dev/null bs=4096 count={READ_BLOCKS} iflag=direct 2>/dev/null
dd if=/dev/zero of=/dev/vda bs=4096 count=4 oflag=direct 2>/dev/null
head -c {HWRNG_BYTES} /dev/hwrng > /dev/null
echo STATS-NOW
sleep 300
"""


def test_counters_follow_guest_io(stratovmm_vm: VmLauncher, guest: Path,
                                  tmp_path: Path) -> None:
    """After the guest read 256 KiB and wrote 16 KiB of vda and read 2 KiB of entropy,
    query-stats reports at least that on d0 and rng, and the console's bytes on serial."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1 << 20))
    args = [*boot_args(guest, GUEST_SCRIPT), "-drive", f"id=d0,file={disk}",
            "-rng", "random_file=/dev/urandom"]
    with boot_lock():
        vm = stratovmm_vm.start(*args)
        vm.wait_for("STATS-NOW", timeout=300)
        qmp = vm.qmp()
        reply = qmp.command("query-stats")["return"]
        qmp.command("quit")
        assert vm.wait(60) == 0
    stats = {r["device"]: {s["name"]: s["value"] for s in r["stats"]} for r in reply}
    assert stats["d0"]["bytes_read"] >= READ_BLOCKS * 4096, stats
    assert stats["d0"]["bytes_written"] >= 4 * 4096, stats
    assert stats["d0"]["requests"] >= READ_BLOCKS * 4096 // (128 * 1024) + 1, stats
    assert stats["rng"]["bytes_read"] >= HWRNG_BYTES and stats["rng"]["requests"] > 0, stats
    assert stats["serial"]["bytes_written"] >= len("STATS-NOW"), stats
    assert stats["d0"]["guest_faults"] == stats["rng"]["guest_faults"] == 0, stats
