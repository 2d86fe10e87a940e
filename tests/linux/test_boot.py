"""Boot the shared Linux test guest: it sees the vCPUs and RAM it was given, from the command
line and from a JSON file overridden by the command line, and the VM exits 0 after the
guest's ``reboot -f``.  The 4-vCPU boot runs with ``-cpu host,kvm-pv-ipi=off`` (as every
multi-vCPU boot here, see ``HOST_CPU``) and the guest's log shows it did without PV IPIs.
Two Linux boots for all of it (each ~25 s on a kvm-pvm host), plus one optional, slow
bzImage boot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stratovmm.testing.guest import (
    HOST_APPEND,
    GuestRun,
    boot_args,
    boot_lock,
    cmd_arg,
    run_guest,
)

MiB = 1 << 20
# What the guest reports: CPUs online and MemTotal (kB) from /proc/meminfo.
PROBE = "echo cpus=$(nproc); grep MemTotal /proc/meminfo"
# ... and, for the 4-vCPU boot, what Linux 6.1's arch/x86/kernel/kvm.c logged about the
# paravirtual features it set up ("kvm-guest: setup PV IPIs" when it uses them).
SMP_PROBE = PROBE + "; dmesg | grep kvm-guest"
BZIMAGE_TIMEOUT = 600.0


def cpus(run: GuestRun) -> int:
    """The guest's ``nproc``."""
    m = re.search(r"^cpus=(\d+)$", run.command_output, re.M)
    assert m, run.stdout[-2000:]
    return int(m.group(1))


def mem_total_mib(run: GuestRun) -> float:
    """The guest's MemTotal in MiB."""
    m = re.search(r"^MemTotal:\s+(\d+) kB$", run.command_output, re.M)
    assert m, run.stdout[-2000:]
    return int(m.group(1)) / 1024


def describe(run: GuestRun) -> str:
    """The end of what a boot printed, for assertion messages."""
    return f"rc={run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"


@pytest.fixture(scope="module")
def smp4_boot(guest: Path) -> GuestRun:
    """One boot with ``-smp 4 -m 512M -cpu host,kvm-pv-ipi=off`` running the probe."""
    args = boot_args(guest, SMP_PROBE, smp=4, mem="512M")
    assert args[args.index("-cpu") + 1] == "host,kvm-pv-ipi=off"
    with boot_lock():
        return run_guest(args)


@pytest.fixture(scope="module")
def json_boot(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    """One boot from a JSON file (2 vCPUs, 512M, serial on stdio) with ``-smp 1`` given on
    the command line."""
    config = tmp_path_factory.mktemp("json-boot") / "vm.json"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(guest / "vmlinux"),
                        "initrd_fs_path": str(guest / "initramfs.cpio"),
                        "boot_args": f"{HOST_APPEND} {cmd_arg(PROBE)}"},
        "machine-config": {"type": "MicroVm", "vcpu_count": 2, "mem_size": 512 * MiB},
        "serial": {"stdio": True},
    }))
    with boot_lock():
        return run_guest(["-config", str(config), "-smp", "1"])


def test_guest_reaches_userspace(smp4_boot: GuestRun) -> None:
    """The guest's /init prints GUEST-READY on the serial console (our stdout)."""
    assert smp4_boot.ready, describe(smp4_boot)
    assert smp4_boot.command_rc == 0, describe(smp4_boot)


def test_guest_sees_four_cpus(smp4_boot: GuestRun) -> None:
    """With -smp 4 every vCPU is online in the guest (nproc = 4)."""
    assert cpus(smp4_boot) == 4, describe(smp4_boot)


def test_guest_does_without_pv_ipis(smp4_boot: GuestRun) -> None:
    """kvm-pv-ipi=off: the guest kernel did not set up PV IPIs, while the PV features left on
    (sched yield, remote TLB flush) it did set up, so its log does report them."""
    log = smp4_boot.command_output
    assert "kvm-guest: setup PV sched yield" in log, describe(smp4_boot)
    assert "kvm-guest: KVM setup pv remote TLB flush" in log, describe(smp4_boot)
    assert "PV IPI" not in log, describe(smp4_boot)


def test_guest_sees_512m(smp4_boot: GuestRun) -> None:
    """With -m 512M the guest's MemTotal is 512 MiB less what the kernel keeps."""
    assert 450 <= mem_total_mib(smp4_boot) <= 512, describe(smp4_boot)


def test_exit_zero_after_guest_reboot(smp4_boot: GuestRun) -> None:
    """The guest's reboot -f (reboot=k: i8042 reset) ends the VMM with status 0."""
    assert "GUEST-HALT" in smp4_boot.stdout, describe(smp4_boot)
    assert smp4_boot.returncode == 0, describe(smp4_boot)


def test_json_config_boots(json_boot: GuestRun) -> None:
    """A JSON -config file alone carries kernel, initrd, cmdline, RAM and serial."""
    assert json_boot.ready, describe(json_boot)
    assert json_boot.command_rc == 0, describe(json_boot)
    assert 450 <= mem_total_mib(json_boot) <= 512, describe(json_boot)
    assert json_boot.returncode == 0, describe(json_boot)


def test_command_line_smp_overrides_json(json_boot: GuestRun) -> None:
    """-smp 1 on the command line beats the file's vcpu_count 2: the guest sees 1 CPU."""
    assert cpus(json_boot) == 1, describe(json_boot)


@pytest.mark.slow
def test_bzimage_boots(guest: Path) -> None:
    """The gzip bzImage (64-bit boot protocol) reaches GUEST-READY and exits 0 on reboot."""
    bzimage = guest / "bzImage"
    if not bzimage.exists():
        pytest.skip("no bzImage in $STRATOVMM_GUEST_DIR")
    args = boot_args(guest, "echo cpus=$(nproc)")
    args[args.index("-kernel") + 1] = str(bzimage)
    with boot_lock():
        run = run_guest(args, timeout=BZIMAGE_TIMEOUT)
    assert run.ready, describe(run)
    assert cpus(run) == 1, describe(run)
    assert run.returncode == 0, describe(run)
