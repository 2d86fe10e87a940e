"""QMP query-stats in a running VM: every recorded device, core plugins' virtio devices and a
non-virtio device alike, with the common counter names (a tiny guest; the Linux test in
tests/linux/test_query_stats_linux.py shows the counters moving under guest I/O)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stratovmm.testing.vm import VmLauncher

COMMON = {"requests", "bytes_read", "bytes_written", "errors", "guest_faults"}


def test_query_stats_lists_every_device(stratovmm_vm: VmLauncher,
                                        stratovmm_tiny_guest: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    """blk, rng (virtio) and serial (a port-I/O device) each report their counters; the
    serial one counts what the guest printed; a filter narrows the reply; an unknown id is
    DeviceNotFound."""
    kernel = stratovmm_tiny_guest("main:\n    mov $msg, %esi\n    call print\n    jmp halt\n"
                                  "msg: .asciz \"STATS-GUEST\\n\"\n")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    vm = stratovmm_vm.start("-kernel", str(kernel), "-serial", "stdio",
                            "-drive", f"id=d0,file={disk}", "-rng", "random_file=/dev/urandom")
    vm.wait_for("STATS-GUEST\n")
    qmp = vm.qmp()
    reply = qmp.command("query-stats", {"target": "device"})["return"]
    stats = {r["device"]: {s["name"]: s["value"] for s in r["stats"]} for r in reply}
    assert {"d0", "rng", "serial"} <= set(stats)
    assert set(stats["d0"]) >= COMMON and set(stats["rng"]) >= COMMON
    assert stats["serial"]["bytes_written"] == len("STATS-GUEST\n")
    for result in reply:
        assert result["provider"] == "stratovmm"
        assert result["qom-path"] == f"/machine/peripheral/{result['device']}"
    only = qmp.command("query-stats", {"devices": ["rng"]})["return"]
    assert [r["device"] for r in only] == ["rng"]
    error = qmp.command("query-stats", {"devices": ["nope"]})["error"]
    assert error == {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}
    qmp.command("quit")
    assert vm.wait() == 0
