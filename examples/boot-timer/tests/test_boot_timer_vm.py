"""The boot timer in a real VM: a tiny PVH guest stores 123 at the timer's address, and the
VMM (the real ``stratovmm`` command, this plugin loaded) logs it, emits BOOT_TIMER and
answers query-boot-time and query-stats.

The Linux test guest cannot do this from userspace: its kernel is built without
CONFIG_DEVMEM, so there is no /dev/mem for ``devmem`` (see the README).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from stratovmm.testing.vm import PluginSource, VmLauncher

PLUGIN = PluginSource("boot-timer", "stratovmm_boot_timer.plugin", Path(__file__).parents[1])


def signalling_guest(addr: int) -> str:
    """A guest body: one bad store (a guest fault), then the magic byte, then halt."""
    return f"""
main:
    movl $7, {addr:#x}
    movb $123, {addr:#x}
    jmp halt
"""


def test_guest_signal_reaches_log_event_command_and_stats(
        stratovmm_vm: VmLauncher, stratovmm_tiny_guest: Callable[[str], Path],
        tmp_path: Path) -> None:
    """JSON key + option (which wins) place the timer; the guest's store is logged, emitted
    as BOOT_TIMER and answered by query-boot-time; query-stats counts the fault too."""
    kernel = stratovmm_tiny_guest(signalling_guest(0xD300_0000))
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot_timer": {"addr": "0xd2000000"}}))
    vm = stratovmm_vm.start("-kernel", str(kernel), "-config", str(config), "-freeze", "-D",
                            "-device", "boot-timer,addr=0xd3000000", plugins=[PLUGIN],
                            env={"STRATOVMM_LOG_LEVEL": "info"})
    qmp = vm.qmp()
    assert qmp.command("query-boot-time")["return"] == {"booted": False, "signals": 0}
    assert qmp.command("cont") == {"return": {}, "id": 2}
    event = qmp.wait_event("BOOT_TIMER", timeout=20)
    assert set(event["data"]) == {"elapsed_us", "cpu_us"}
    assert 0 < event["data"]["elapsed_us"] < 60_000_000
    reply = qmp.command("query-boot-time")["return"]
    assert reply == {"booted": True, "signals": 1, **event["data"]}
    stats = {r["device"]: {s["name"]: s["value"] for s in r["stats"]}
             for r in qmp.command("query-stats")["return"]}
    assert stats["boot-timer"]["requests"] == 2             # every store, the bad one too
    assert stats["boot-timer"]["signals"] == 1
    assert stats["boot-timer"]["bytes_written"] == 1
    assert stats["boot-timer"]["guest_faults"] == 1
    vm.wait_for("Guest-boot-time = ", stream="stderr")
    assert "boot timer at 0xd3000000" in vm.stderr
    assert qmp.command("quit") == {"return": {}, "id": 5}
    assert vm.wait() == 0


def test_bad_address_is_refused_before_boot(stratovmm_vm: VmLauncher,
                                            stratovmm_tiny_guest: Callable[[str], Path]) -> None:
    """An address inside RAM is a usage error (exit 2) naming the option."""
    kernel = stratovmm_tiny_guest(signalling_guest(0xD100_0000))
    run = stratovmm_vm.run("-kernel", str(kernel), "-device", "boot-timer,addr=0x100000",
                           plugins=[PLUGIN])
    assert run.returncode == 2
    assert run.stderr == ("stratovmm: -device boot-timer addr: 0x100000 is outside the free"
                          " MMIO range [0xd0010000, 0xfec00000)\n")
