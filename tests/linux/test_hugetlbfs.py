"""Linux booted with guest RAM on a hugetlbfs mount the test makes."""

from __future__ import annotations

import time
from pathlib import Path

from procvm import guest_ram_mapping, hugetlbfs, meminfo, start_vmm

from stratovmm.testing.guest import GUEST_TIMEOUT, GuestRun, boot_args

MEM = 256 << 20


def test_linux_runs_on_hugetlbfs_backed_shared_ram(guest: Path, tmp_path: Path,
        boot_lock: None) -> None:
    """-mem-path on hugetlbfs with mem-share=on, dump-guest-core=off: the guest boots, sees its
    256 MiB and runs a command; host side, its RAM is one shared hugetlb mapping marked dd."""
    with hugetlbfs(tmp_path / "hugepages", MEM) as mount:
        args = [*boot_args(guest, command="grep MemTotal /proc/meminfo"),
                "-mem-path", str(mount), "-machine", "microvm,mem-share=on,dump-guest-core=off"]
        with start_vmm(args, tmp_path) as vmm:
            ram = None
            used = 0
            deadline = time.monotonic() + GUEST_TIMEOUT
            while vmm.proc.poll() is None and time.monotonic() < deadline:
                if ram is None and "GUEST-READY" in vmm.stdout():
                    ram = guest_ram_mapping(vmm.pid, MEM)
                    used = meminfo("HugePages_Total") - meminfo("HugePages_Free")
                time.sleep(0.2)
            rc = vmm.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            run = GuestRun(rc, vmm.stdout(), vmm.stderr())
        assert run.returncode == 0, run.stderr
        assert run.ready and run.command_rc == 0
        total_kb = int(run.command_output.split()[1])
        assert 200 * 1024 < total_kb <= 256 * 1024
        assert ram is not None, "the guest never printed GUEST-READY"
        assert {"ht", "sh", "dd"} <= ram.vmflags
        assert ram.path.startswith(f"{mount}/stratovmm-ram-")
        assert used > 0          # the guest touched huge pages, not ordinary ones
        assert list(mount.iterdir()) == []
