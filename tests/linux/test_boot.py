"""Boot the shared Linux test guest: it sees the vCPUs and RAM it was given, from the command
line and from a JSON file overridden by the command line, and the VM exits 0 after the
guest's ``reboot -f``.  Two Linux boots for all of it (each ~25 s on a kvm-pvm host), plus
one optional, slow bzImage boot."""

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
def smp2_boot(guest: Path) -> GuestRun:
    """One boot with ``-smp 2 -m 512M`` running the probe."""
    with boot_lock():
        return run_guest(boot_args(guest, PROBE, smp=2, mem="512M"))


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


def test_guest_reaches_userspace(smp2_boot: GuestRun) -> None:
    """The guest's /init prints GUEST-READY on the serial console (our stdout)."""
    assert smp2_boot.ready, describe(smp2_boot)
    assert smp2_boot.command_rc == 0, describe(smp2_boot)


def test_guest_sees_two_cpus(smp2_boot: GuestRun) -> None:
    """With -smp 2 both vCPUs are online in the guest (nproc = 2)."""
    assert cpus(smp2_boot) == 2, describe(smp2_boot)


def test_guest_sees_512m(smp2_boot: GuestRun) -> None:
    """With -m 512M the guest's MemTotal is 512 MiB less what the kernel keeps."""
    assert 450 <= mem_total_mib(smp2_boot) <= 512, describe(smp2_boot)


def test_exit_zero_after_guest_reboot(smp2_boot: GuestRun) -> None:
    """The guest's reboot -f (reboot=k: i8042 reset) ends the VMM with status 0."""
    assert "GUEST-HALT" in smp2_boot.stdout, describe(smp2_boot)
    assert smp2_boot.returncode == 0, describe(smp2_boot)


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
