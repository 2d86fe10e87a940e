#!/usr/bin/env python3
"""Consecutive multi-vCPU Linux boots, with or without the guest's paravirtual IPIs.

On kvm-pvm hosts a 4-vCPU boot of the Linux guest panics now and then late in boot in the
PV-IPI hypercall (``__send_ipi_mask``, VMCALL).  This script boots the guest ``--boots``
times in a row (``-smp N``, ``-cpu host,kvm-pv-ipi=off`` unless ``--pv-ipi``), each boot
under the machine-wide boot lock (``flock`` on ``/tmp/stratovmm-boot.lock``), and counts
the boots that reach ``GUEST-READY``, see ``nproc`` = N and exit 0.  A failed boot's
console tail is printed, and its panic line if the guest panicked.

usage: python bench/smp_boots.py [--boots N] [--smp N] [--mem SIZE] [--pv-ipi] [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import common

from stratovmm.testing.guest import (
    BOOT_LOCK,
    GUEST_TIMEOUT,
    boot_args,
    file_lock,
    run_guest,
)

PROBE = "echo cpus=$(nproc); dmesg | grep -i -e 'kvm-guest' -e 'PV IPI' -e 'pv sched'"
_PANIC = re.compile(r"Kernel panic|__send_ipi_mask|BUG:|Oops")


@dataclass
class Boot:
    """One boot's outcome."""

    index: int
    seconds: float
    returncode: int
    ready: bool
    cpus: int | None
    panic: str | None
    kvm_lines: list[str]

    @property
    def ok(self) -> bool:
        """GUEST-READY, every vCPU online in the guest, exit status 0, no panic."""
        return (self.ready and self.returncode == 0 and self.cpus is not None
                and self.panic is None)


def boot_command(guest: Path, smp: int, mem: str, pv_ipi: bool) -> list[str]:
    """``boot_args`` for ``smp`` vCPUs; with ``pv_ipi`` the ``-cpu`` option is left out."""
    args = boot_args(guest, PROBE, smp=smp, mem=mem)
    if pv_ipi and "-cpu" in args:
        at = args.index("-cpu")
        del args[at:at + 2]
    return args


def one_boot(index: int, args: list[str], smp: int) -> tuple[Boot, str]:
    """Boot once under the boot lock; (outcome, console text)."""
    with file_lock(BOOT_LOCK):
        start = time.monotonic()
        try:
            run = run_guest(args)
            rc, stdout = run.returncode, run.stdout
            output, ready = run.command_output, run.ready
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or b""
            stdout = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            rc, output, ready = -1, "", "GUEST-READY" in stdout
        seconds = time.monotonic() - start
    m = re.search(r"^cpus=(\d+)$", output, re.M)
    cpus = int(m.group(1)) if m and int(m.group(1)) == smp else None
    panic = next((line.strip() for line in stdout.splitlines() if _PANIC.search(line)), None)
    kvm = [line.strip() for line in output.splitlines() if not line.startswith("cpus=")]
    return Boot(index, round(seconds, 1), rc, ready, cpus, panic, kvm), stdout


def main(argv: list[str] | None = None) -> int:
    """Run the series; exit 0 when every boot was good."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=20)
    parser.add_argument("--smp", type=int, default=4)
    parser.add_argument("--mem", default="256M")
    parser.add_argument("--pv-ipi", action="store_true",
                        help="leave the guest its PV IPIs (no -cpu option)")
    parser.add_argument("--guest", type=Path, default=common.GUEST,
                        help="guest directory (default: $STRATOVMM_GUEST_DIR, else the one "
                             "'stratovmm-guest build' made)")
    parser.add_argument("--json", help="write the outcomes here")
    args = parser.parse_args(argv)
    command = boot_command(args.guest, args.smp, args.mem, args.pv_ipi)
    print("stratovmm " + " ".join(command), flush=True)
    print(f"(each boot under flock {BOOT_LOCK}; timeout {GUEST_TIMEOUT:.0f} s)", flush=True)
    boots: list[Boot] = []
    for i in range(args.boots):
        boot, stdout = one_boot(i, command, args.smp)
        boots.append(boot)
        state = "ok" if boot.ok else "FAILED"
        print(f"boot {i + 1}/{args.boots}: {state} rc={boot.returncode} ready={boot.ready}"
              f" cpus={boot.cpus} {boot.seconds}s {boot.kvm_lines}"
              + (f" panic: {boot.panic}" if boot.panic else ""), flush=True)
        if not boot.ok:
            print("  console tail:\n    " + "\n    ".join(stdout.splitlines()[-25:]),
                  flush=True)
    good = sum(b.ok for b in boots)
    print(f"{good} of {len(boots)} boots reached GUEST-READY with nproc={args.smp} and exited 0"
          f" ({'-cpu host,kvm-pv-ipi=off' if not args.pv_ipi else 'PV IPIs on'})")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(b) for b in boots], indent=1))
    return 0 if good == len(boots) else 1


if __name__ == "__main__":
    sys.exit(main())
