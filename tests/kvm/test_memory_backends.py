"""Guest RAM backends seen from the host: /proc/PID/smaps of a VMM running a tiny guest.

The looping guest keeps the VM up while the test reads smaps; SIGTERM then ends
the VMM with an orderly shutdown and exit status 0.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from procvm import (
    Mapping,
    guest_ram_mapping,
    hugetlbfs,
    meminfo,
    start_vmm,
    tiny_guest,
    vmm_command,
)

pytestmark = pytest.mark.usefixtures("kvm_available")

MEM = 256 << 20


def ram_of_running_vm(tmp_path: Path, *extra: str) -> Mapping:
    """Boot the looping guest with ``extra`` options; return its guest-RAM mapping, then SIGTERM."""
    args = ["-m", "256M", "-kernel", str(tiny_guest("loop")), "-serial", "stdio", *extra]
    with start_vmm(args, tmp_path) as vmm:
        vmm.wait_for_output("L")
        mapping = guest_ram_mapping(vmm.pid, MEM)
        assert vmm.terminate() == 0, vmm.stderr()
    return mapping


def test_default_ram_is_private_anonymous_and_dumpable(tmp_path: Path) -> None:
    """Without options guest RAM is a private anonymous mapping without the dd flag."""
    ram = ram_of_running_vm(tmp_path)
    assert ram.perms == "rw-p"
    assert ram.path == ""
    assert "sh" not in ram.vmflags
    assert "dd" not in ram.vmflags


def test_mem_share_maps_guest_ram_shared(tmp_path: Path) -> None:
    """-machine mem-share=on: the guest-RAM mapping is MAP_SHARED (perms rw-s, VmFlags sh)."""
    ram = ram_of_running_vm(tmp_path, "-machine", "microvm,mem-share=on")
    assert ram.perms == "rw-s"
    assert "sh" in ram.vmflags


def test_dump_guest_core_off_marks_ram_dontdump(tmp_path: Path) -> None:
    """-machine dump-guest-core=off: MADV_DONTDUMP shows as the dd flag on guest RAM."""
    ram = ram_of_running_vm(tmp_path, "-machine", "microvm,dump-guest-core=off")
    assert "dd" in ram.vmflags


def test_dump_guest_core_on_is_explicitly_dumpable(tmp_path: Path) -> None:
    """-machine dump-guest-core=on keeps guest RAM in core dumps (no dd flag)."""
    ram = ram_of_running_vm(tmp_path, "-machine", "microvm,dump-guest-core=on")
    assert "dd" not in ram.vmflags


def test_mem_path_file_backs_guest_ram(tmp_path: Path) -> None:
    """-mem-path FILE: guest RAM is a private mapping of that file, sized to the RAM."""
    backing = tmp_path / "guest.ram"
    ram = ram_of_running_vm(tmp_path, "-mem-path", str(backing))
    assert ram.path == str(backing)
    assert ram.perms == "rw-p"
    assert backing.stat().st_size == MEM


def test_mem_path_file_with_mem_share_is_a_shared_file_mapping(tmp_path: Path) -> None:
    """-mem-path FILE with mem-share=on: another process could map the same guest RAM."""
    backing = tmp_path / "guest.ram"
    ram = ram_of_running_vm(tmp_path, "-mem-path", str(backing), "-machine",
                            "microvm,mem-share=on,dump-guest-core=off")
    assert ram.path == str(backing)
    assert ram.perms == "rw-s"
    assert {"sh", "dd"} <= ram.vmflags


def test_mem_path_directory_gets_an_unlinked_file(tmp_path: Path) -> None:
    """-mem-path DIR: guest RAM is an unlinked temporary file in DIR (nothing left behind)."""
    directory = tmp_path / "ramdir"
    directory.mkdir()
    ram = ram_of_running_vm(tmp_path, "-mem-path", str(directory))
    assert ram.path.startswith(f"{directory}/stratovmm-ram-")
    assert ram.path.endswith("(deleted)")
    assert os.listdir(directory) == []


def test_mem_path_on_hugetlbfs_uses_huge_pages(tmp_path: Path) -> None:
    """-mem-path on a hugetlbfs mount: guest RAM is hugetlb (ht flag, 2 MiB kernel pages) and
    the huge pages are reserved for it while the VM runs."""
    with hugetlbfs(tmp_path / "hugepages", MEM) as mount:
        free_before = meminfo("HugePages_Free") - meminfo("HugePages_Rsvd")
        args = ["-m", "256M", "-kernel", str(tiny_guest("loop")), "-serial", "stdio",
                "-mem-path", str(mount)]
        with start_vmm(args, tmp_path) as vmm:
            vmm.wait_for_output("L")
            ram = guest_ram_mapping(vmm.pid, MEM)
            in_use = free_before - (meminfo("HugePages_Free") - meminfo("HugePages_Rsvd"))
            assert vmm.terminate() == 0, vmm.stderr()
        assert "ht" in ram.vmflags
        assert ram.fields["KernelPageSize"] == f"{meminfo('Hugepagesize')} kB"
        assert ram.path.startswith(f"{mount}/stratovmm-ram-")
        assert in_use == MEM // (meminfo("Hugepagesize") * 1024)
        assert os.listdir(mount) == []


def test_mem_path_on_hugetlbfs_refuses_a_size_that_is_not_whole_pages(tmp_path: Path) -> None:
    """A RAM size that is not a multiple of the huge page size is a clear -mem-path error."""
    with hugetlbfs(tmp_path / "hugepages", MEM + (2 << 20)) as mount:
        proc = subprocess.run(vmm_command("-m", str(MEM + 4096), "-kernel",
                                          str(tiny_guest("reset")), "-mem-path", str(mount)),
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"stratovmm: -mem-path {mount}: cannot size the backing file")
    assert "multiple of the huge page size" in proc.stderr
