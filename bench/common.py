"""Command lines of the two VMMs under test, built for the same guest."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

from stratovmm.testing.guest import HOST_APPEND, HOST_CPU, stratovmm_command

ROOT = Path(__file__).resolve().parent.parent
GUEST_HELP = ("The guest booted is $STRATOVMM_GUEST_DIR (any directory with vmlinux, "
              "initramfs.cpio and rootfs.ext4), else the one 'stratovmm-guest build' made "
              "(the directory 'stratovmm-guest path' prints).")


def default_guest() -> Path:
    """``$STRATOVMM_GUEST_DIR``, else the directory ``stratovmm-guest build`` writes (as
    ``stratovmm-guest demo`` chooses)."""
    env = os.environ.get("STRATOVMM_GUEST_DIR")
    if env:
        return Path(env)
    from stratovmm_guest.cli import default_out

    return Path(default_out())


GUEST = default_guest()
QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
STRATOVMM = stratovmm_command()     # the one beside this interpreter, as the tests run it
QEMU_BASE = [QEMU, "-M", "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=off,acpi=off",
             "-enable-kvm", "-nodefaults", "-no-user-config",
             "-nographic", "-serial", "stdio", "-no-reboot", "-device", "i8042",
             "-global", "virtio-mmio.force-legacy=false",
             # name QEMU's threads (CPU n/KVM, IO id, worker) so per-thread CPU can be split
             "-name", "qemu-bench,debug-threads=on"]


def qemu(smp: int, mem: str, kernel: Path, append: str | None, initrd: Path | None,
         extra: list[str] | None = None) -> list[str]:
    """QEMU microvm with the shared bench settings (several vCPUs: no PV IPIs, as ours)."""
    # QEMU 7.2 on this kvm-pvm host refuses MSR 0x10a (arch-capabilities) with -cpu host
    cpu = "host,-arch-capabilities" + (",kvm-pv-ipi=off" if smp > 1 else "")
    cmd = [*QEMU_BASE, "-cpu", cpu, "-smp", str(smp), "-m", mem, "-kernel", str(kernel)]
    if initrd:
        cmd += ["-initrd", str(initrd)]
    if append is not None:
        cmd += ["-append", append]
    return cmd + (extra or [])


def stratovmm(smp: int, mem: str, kernel: Path, append: str | None, initrd: Path | None,
              extra: list[str] | None = None) -> list[str]:
    """StratoVMM with the same guest (seccomp on, as shipped; several vCPUs: ``HOST_CPU``)."""
    cmd = [*STRATOVMM, "-smp", str(smp), "-m", mem, "-kernel", str(kernel), "-serial", "stdio"]
    if smp > 1:
        cmd += ["-cpu", HOST_CPU]
    if initrd:
        cmd += ["-initrd", str(initrd)]
    if append is not None:
        cmd += ["-append", append]
    return cmd + (extra or [])


def median(values: list[float]) -> float:
    """Median of the non-empty list."""
    return float(statistics.median(values))


APPEND = HOST_APPEND


def dump(results: object, out: str | None) -> None:
    """Print the raw figures as JSON (and write them to ``out`` when given)."""
    text = json.dumps(results, indent=1)
    if out:
        Path(out).write_text(text)
    print(text)


def median_of(results: dict[str, list[dict[str, dict[str, float]]]], vmm: str, item: str,
              key: str) -> float:
    """Median of ``key`` of ``item`` over the runs of ``vmm`` that measured it."""
    return median([r[item][key] for r in results[vmm] if item in r])
