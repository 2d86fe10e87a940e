"""QMP stop really stops a Linux guest, and cont lets it go on where it was."""

from __future__ import annotations

import re
import time
from pathlib import Path

from qmp_vm import VmProcess

from stratovmm.testing.guest import GUEST_TIMEOUT, boot_args

COUNTER = 'i=0; while true; do echo "TICK $i"; i=$((i+1)); sleep 0.2; done'


def ticks(vm: VmProcess) -> list[int]:
    return [int(n) for n in re.findall(r"TICK (\d+)", vm.stdout)]


def test_counter_makes_no_progress_between_stop_and_cont(guest: Path, boot_lock: None) -> None:
    """A guest printing a counter every 0.2 s prints nothing for 2 s after stop, and after
    cont continues from the next number (same guest, not restarted)."""
    vm = VmProcess(boot_args(guest, COUNTER))
    try:
        assert vm.wait_stdout("TICK 5", GUEST_TIMEOUT), vm.stdout + vm.stderr
        with vm.client() as client:
            assert client.command("stop")["return"] == {}
            client.wait_event("STOP", 5)
            time.sleep(0.5)                      # what was already on its way to stdout
            paused_at = max(ticks(vm))
            time.sleep(2.0)
            assert max(ticks(vm)) == paused_at, "the guest ran while paused"
            assert client.command("query-status")["return"]["status"] == "paused"
            assert client.command("cont")["return"] == {}
            client.wait_event("RESUME", 5)
            assert vm.wait_stdout(f"TICK {paused_at + 3}", 10), vm.stdout[-500:]
            seen = ticks(vm)
            assert seen == list(range(seen[0], seen[-1] + 1)), "counter restarted or skipped"
            client.command("quit")
        assert vm.wait() == 0
    finally:
        vm.close()
