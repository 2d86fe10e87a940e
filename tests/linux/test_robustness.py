"""Robustness with the Linux guest: a write the guest flushed survives a SIGKILL of the VMM
(raw drive and ext4 root), a guest kernel panic ends the VM (as a reset: the test kernel
has no pvpanic driver), and ten VMs booted at once all come up and exit cleanly."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from qmp_vm import VmProcess

from stratovmm.testing.guest import GUEST_TIMEOUT, HOST_APPEND, boot_args
from stratovmm.testing.qmp import QmpTestClient

MiB = 1 << 20
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BENCH = Path(__file__).resolve().parents[2] / "bench" / "concurrency.py"
CONCURRENT_VMS = int(os.environ.get("STRATOVMM_CONCURRENT_VMS", "10"))
CONCURRENT_TIMEOUT = float(os.environ.get("STRATOVMM_CONCURRENT_TIMEOUT", "900"))


def pattern(token: str, size: int) -> bytes:
    """What ``yes TOKEN | head -c SIZE`` writes."""
    line = (token + "\n").encode()
    return (line * (size // len(line) + 1))[:size]


def kill_at_marker(vm: VmProcess, marker: str) -> None:
    """SIGKILL the VMM as soon as ``marker`` is on the serial line (the guest is still
    running then: it sleeps after printing it)."""
    seen = vm.wait_stdout(marker, GUEST_TIMEOUT)
    running = vm.proc.poll() is None
    vm.proc.send_signal(signal.SIGKILL)
    assert seen, f"no {marker}\nstdout:\n{vm.stdout[-3000:]}\nstderr:\n{vm.stderr[-3000:]}"
    assert running, "the VMM ended before the marker could be acted on"
    assert vm.wait(30) == -signal.SIGKILL


def test_sigkill_after_flush_keeps_raw_drive_data(guest: Path, tmp_path: Path,
                                                  boot_lock: None) -> None:
    """1 MiB written by dd conv=fsync (virtio-blk writes + flush) is in the image file when
    the VMM is SIGKILLed the moment the guest reports the flush done.

    fd 3 keeps /dev/vda open, so dd's close is not the last one (which would write the
    dirty pages back by itself): the data reaches the VMM only through the fsync.  Without
    conv=fsync the same run leaves the image empty."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(4 * MiB)
    token = f"STRATOVMM-FLUSH-{secrets.token_hex(8)}"
    marker = f"FLUSHED-{token[-16:]}"
    command = (f"exec 3</dev/vda; yes {token} | head -c {MiB} |"
               f" dd of=/dev/vda bs=64k seek=16 conv=fsync 2>/dev/null && echo {marker}; sleep 600")
    vm = VmProcess([*boot_args(guest, command), "-drive", f"id=d,file={image}"])
    try:
        kill_at_marker(vm, marker)
    finally:
        vm.close()
    data = image.read_bytes()
    assert data[MiB:2 * MiB] == pattern(token, MiB)
    assert data[:MiB] == bytes(MiB) and data[2 * MiB:] == bytes(2 * MiB)


def test_sigkill_after_sync_keeps_ext4_file(guest: Path, tmp_path: Path,
                                            boot_lock: None) -> None:
    """A file written through the guest page cache of an ext4 root and `sync`ed is in the
    image (after e2fsck replays the journal) when the VMM is SIGKILLed right after
    (without the sync the file is not there)."""
    e2fsck = shutil.which("e2fsck", path=SBIN_PATH)
    debugfs = shutil.which("debugfs", path=SBIN_PATH)
    if e2fsck is None or debugfs is None:
        pytest.skip("e2fsprogs (e2fsck, debugfs) not installed")
    root = tmp_path / "rootfs.ext4"
    shutil.copyfile(guest / "rootfs.ext4", root)
    token = f"STRATOVMM-SYNC-{secrets.token_hex(8)}"
    marker = f"SYNCED-{token[-16:]}"
    size = 256 * 1024
    command = f"yes {token} | head -c {size} > /robust.bin && sync && echo {marker}; sleep 600"
    vm = VmProcess([*boot_args(guest, command, extra_append="root=/dev/vda rw init=/init",
                               initrd=False), "-drive", f"id=root,file={root}"])
    try:
        kill_at_marker(vm, marker)
    finally:
        vm.close()
    fsck = subprocess.run([e2fsck, "-fy", str(root)], capture_output=True, text=True,
                          timeout=120)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr   # 1: journal replayed
    cat = subprocess.run([debugfs, "-R", "cat /robust.bin", str(root)], capture_output=True,
                         timeout=120)
    assert cat.stdout == pattern(token, size), cat.stderr.decode(errors="replace")


def test_linux_panic_ends_the_vm_as_a_reset(guest: Path, boot_lock: None) -> None:
    """A real kernel panic (init exits) with panic=-1 resets through the i8042 at once: the
    VM ends (no hang) with SHUTDOWN guest-reset to a connected client and exit 0 — the
    test kernel has no pvpanic driver (no ACPI), so the VMM cannot tell it from a reboot."""
    append = HOST_APPEND + ' rdinit=/bin/sh -- -c "echo PANIC-NEXT; exit 0"'
    args = ["-smp", "1", "-m", "256M", "-kernel", str(guest / "vmlinux"), "-initrd",
            str(guest / "initramfs.cpio"), "-serial", "stdio", "-append", append]
    vm = VmProcess(args)
    try:
        client: QmpTestClient = vm.client()
        with client:
            event = client.wait_event("SHUTDOWN", GUEST_TIMEOUT)
            assert event["data"] == {"guest": True, "reason": "guest-reset"}, event
            assert client.read_eof(30)
        assert vm.wait(30) == 0, vm.stderr
    finally:
        vm.close()
    assert "PANIC-NEXT" in vm.stdout, vm.stdout[-3000:]
    assert "Kernel panic - not syncing: Attempted to kill init!" in vm.stdout, vm.stdout[-3000:]


def load_bench() -> ModuleType:
    """bench/concurrency.py, which the test shares with the benchmark."""
    if not BENCH.exists():
        pytest.skip(f"{BENCH} not found (tests run outside the source tree)")
    if str(BENCH.parent) not in sys.path:       # the script imports bench/common.py
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("stratovmm_bench_concurrency", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ten_vms_booted_at_once_all_come_up_and_exit_0(guest: Path, boot_lock: None) -> None:
    """StratoVirt's concurrency case: 10 VMs (-smp 1 -m 256M) started at once all reach
    GUEST-READY and exit 0 after the guest's reboot; per-VM time and peak RSS printed."""
    bench = load_bench()
    results, wall = bench.run_concurrent(guest, vms=CONCURRENT_VMS, smp=1, mem="256M",
                                         timeout=CONCURRENT_TIMEOUT)
    print("\n" + bench.markdown_table(results, wall, 1, "256M"))
    assert len(results) == CONCURRENT_VMS
    failed = [r for r in results if not r.ok]
    assert not failed, "\n\n".join(f"VM {r.index}: rc={r.returncode} ready={r.ready_s}\n"
                                   f"{r.output}" for r in failed)
