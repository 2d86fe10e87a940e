"""virtio-balloon with the real Linux guest: QMP ``balloon`` to half the RAM makes the
guest inflate (its MemTotal drops by exactly the balloon, ``query-balloon`` and
``BALLOON_CHANGED`` follow, the VMM's RSS drops), and ballooning back to the full
RAM deflates it (MemTotal comes back).  One boot checks all of it."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from stratovmm.testing.guest import boot_args, boot_lock, stratovmm_command
from stratovmm.testing.qmp import QmpTestClient

MiB = 1 << 20
RAM = 256 * MiB
PAGE = 4096
TIMEOUT = float(os.environ.get("STRATOVMM_GUEST_TIMEOUT", "240"))

# The guest's free pages must be resident on the host before inflating, or the balloon
# would hand back pages the host never backed and RSS could not drop.  The kernel's
# init_on_free=1 zeroes every page it frees, including all of RAM as it is released to
# the page allocator at boot: every free page is touched once, several times faster
# than filling a tmpfs file from the guest (which costs ~1 s per MiB written and freed
# on a kvm-pvm host, where guest kernel code is emulated).
APPEND = "init_on_free=1"

# Runs in the guest's busybox shell: builtins only in the polling loop (each fork costs
# ~0.1-0.3 s on a kvm-pvm host).  Prints MemTotal (kB) each time it changes, until it
# has gone down and come back, or the guest's uptime passes the deadline.
GUEST_SCRIPT = r"""
mt() {
  while read -r k v _; do if [ "$k" = MemTotal: ]; then MT=$v; return; fi; done < /proc/meminfo
}
for d in /sys/bus/virtio/devices/*; do
  read -r id < "$d/device"
  if [ "$id" = 0x0005 ]; then read -r f < "$d/features"; echo "BALLOON-FEATURES $f"; fi
done
mt; T0=$MT
read -r up _ < /proc/uptime
echo "BALLOON-START memtotal=$T0 up=$up"
last=$T0; low=0
while :; do
  mt
  read -r up _ < /proc/uptime
  if [ "$MT" != "$last" ]; then echo "BALLOON-MEMTOTAL $MT up=$up"; last=$MT; fi
  [ "$MT" -lt "$T0" ] && low=1
  if [ $low = 1 ] && [ "$MT" = "$T0" ]; then break; fi
  [ "${up%.*}" -gt @DEADLINE@ ] && break
  sleep 0.3
done
# stay up a while: the test still asks query-balloon after the last BALLOON_CHANGED
sleep 2
echo "BALLOON-DONE low=$low"
""".replace("@DEADLINE@", str(int(TIMEOUT)))


class Vm:
    """The VMM in a subprocess; serial lines are read as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([*stratovmm_command(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream: IO[bytes], serial: bool) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if serial:
                self.transcript.append(line)
                self.lines.put(line)
            else:
                self.stderr.append(line)

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first later serial line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                raise AssertionError(f"no line matching {pattern!r}; serial:\n"
                                     + "\n".join(self.transcript[-40:])
                                     + "\nstderr:\n" + "\n".join(self.stderr[-20:]))
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            match = re.search(pattern, line)
            if match:
                return match

    def qmp(self, path: str) -> QmpTestClient:
        """Connect to the QMP socket once it exists; fail at once if the VMM died first."""
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)          # let the reader threads catch the last words
                raise AssertionError(f"no QMP socket (rc={self.proc.returncode}); stderr:\n"
                                     + "\n".join(self.stderr[-20:]))
            time.sleep(0.05)
        return QmpTestClient(path, timeout=TIMEOUT)

    def rss_kib(self) -> int:
        """The VMM's resident set (VmRSS, KiB)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1))

    def close(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def wait_actual(qmp: QmpTestClient, expected: int, timeout: float = TIMEOUT) -> None:
    """Wait for BALLOON_CHANGED events until one reports ``expected`` bytes."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"BALLOON_CHANGED never reached {expected}: {seen[-5:]}")
        event = qmp.wait_event("BALLOON_CHANGED", remaining)
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        seen.append(event["data"]["actual"])
        if seen[-1] == expected:
            return


def test_balloon_inflate_and_deflate(guest: Path) -> None:
    """balloon to RAM/2: guest MemTotal -RAM/2 exactly, query-balloon RAM/2, RSS drops;
    balloon to RAM: MemTotal and query-balloon back; deflate-on-oom=off not offered."""
    sockdir = tempfile.mkdtemp(prefix="balloon-")
    sock = os.path.join(sockdir, "qmp.sock")
    args = [*boot_args(guest, GUEST_SCRIPT, APPEND, mem="256M"), "-balloon", "deflate-on-oom=off",
            "-api-channel", f"unix:{sock}"]
    assert "@" not in GUEST_SCRIPT
    asked = time.monotonic()
    with boot_lock():
        vm_start = time.monotonic()
        vm = Vm(args)
        try:
            qmp = vm.qmp(sock)
            assert qmp.command("query-balloon") == {"return": {"actual": RAM}, "id": 1}
            assert qmp.command("balloon", {"value": 0})["error"]["class"] == "GenericError"

            features = vm.expect(r"BALLOON-FEATURES ([01]+)").group(1)
            assert features[2] == "0", "DEFLATE_ON_OOM negotiated with deflate-on-oom=off"
            assert features[32] == "1", "VIRTIO_F_VERSION_1 not negotiated"
            total = int(vm.expect(r"BALLOON-START memtotal=(\d+)").group(1))
            rss_full = vm.rss_kib()

            started = time.monotonic()
            assert "error" not in qmp.command("balloon", {"value": RAM // 2})
            wait_actual(qmp, RAM // 2)
            inflate_s = time.monotonic() - started
            assert qmp.command("query-balloon")["return"] == {"actual": RAM // 2}
            vm.expect(rf"BALLOON-MEMTOTAL {total - RAM // 2 // 1024} ")
            rss_ballooned = vm.rss_kib()

            started = time.monotonic()
            assert "error" not in qmp.command("balloon", {"value": RAM})
            wait_actual(qmp, RAM)
            deflate_s = time.monotonic() - started
            assert qmp.command("query-balloon")["return"] == {"actual": RAM}
            vm.expect(rf"BALLOON-MEMTOTAL {total} ")
            vm.expect(r"BALLOON-DONE low=1")
            vm.expect(r"GUEST-CMD-END rc=0")
            assert vm.proc.wait(TIMEOUT) == 0
            vm_seconds = time.monotonic() - vm_start
            qmp.close()
        finally:
            vm.close()
            shutil.rmtree(sockdir, ignore_errors=True)
    drop = rss_full - rss_ballooned
    print(f"MemTotal {total} kB; RSS {rss_full} -> {rss_ballooned} kB (drop {drop} kB);"
          f" inflate {inflate_s:.1f} s, deflate {deflate_s:.1f} s; VM {vm_seconds:.0f} s"
          f" (after {vm_start - asked:.0f} s waiting for the boot lock)")
    # the balloon takes 128 MiB of pages that init_on_free made resident
    assert drop >= 96 * 1024, f"VMM RSS dropped by only {drop} kB"


