#!/usr/bin/env python3
"""StratoVirt's concurrency case: N StratoVMM processes booting the Linux guest at once.

Every VM runs the Linux guest (``vmlinux`` + ``initramfs.cpio``, the host's usual
append), whose ``/init`` prints ``GUEST-READY`` and then reboots (``reboot=k`` → i8042
→ the VMM exits 0).  All N are started within a few milliseconds of each other; for
each the script records the wall time from the common start to ``GUEST-READY`` and to
process exit, the exit status, and the peak RSS (``ru_maxrss`` from ``wait4``: every
page the VMM ever had resident, guest RAM the guest touched included).

Prints a markdown table (one row per VM and a summary) and, with ``--json``, writes the
numbers.  Guest boots are CPU-bound: on a shared machine run it under the boot lock
(``flock /tmp/stratovmm-boot.lock python bench/concurrency.py``).

usage: python bench/concurrency.py [--vms N] [--smp N] [--mem SIZE] [--timeout S] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common

from stratovmm.testing.guest import boot_args, stratovmm_command

READY = b"GUEST-READY"


@dataclass
class VmResult:
    """What one of the concurrent VMs did (times in seconds from the common start)."""

    index: int
    ready_s: float | None = None
    exit_s: float | None = None
    returncode: int | None = None
    peak_rss_kib: int = 0
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        """Reached GUEST-READY and exited 0."""
        return self.ready_s is not None and self.returncode == 0


@dataclass
class _Running:
    result: VmResult
    proc: subprocess.Popen[bytes]
    buf: bytearray = field(default_factory=bytearray)
    open_streams: int = 2


def run_concurrent(guest: Path, vms: int = 10, smp: int = 1, mem: str = "256M",
                   timeout: float = 900.0) -> tuple[list[VmResult], float]:
    """Start ``vms`` VMs at once and follow them to their end; returns the results and
    the wall time until the last one ended.  VMs still running at ``timeout`` are
    killed (their ``returncode`` is then negative)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("STRATOVMM_LOG_LEVEL", "STRATOVIRT_LOG_LEVEL")}
    command = [*stratovmm_command(), *boot_args(guest, smp=smp, mem=mem)]
    selector = selectors.DefaultSelector()
    running: dict[int, _Running] = {}
    start = time.monotonic()
    for index in range(vms):
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        entry = _Running(VmResult(index), proc)
        running[proc.pid] = entry
        for stream in (proc.stdout, proc.stderr):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ, entry)
    finished: list[VmResult] = []
    while running and time.monotonic() - start < timeout:
        for key, _ in selector.select(timeout=1.0):
            entry = key.data
            chunk = os.read(key.fd, 65536)
            if chunk:
                if key.fileobj is entry.proc.stdout:
                    entry.buf += chunk
                    if entry.result.ready_s is None and READY in entry.buf:
                        entry.result.ready_s = round(time.monotonic() - start, 2)
                else:
                    entry.result.output += chunk.decode(errors="replace")
                continue
            selector.unregister(key.fileobj)
            entry.open_streams -= 1
            if entry.open_streams == 0:
                finished.append(_reap(entry, start))
                del running[entry.proc.pid]
    for entry in running.values():
        entry.proc.kill()
        finished.append(_reap(entry, start))
    selector.close()
    return sorted(finished, key=lambda r: r.index), round(time.monotonic() - start, 2)


def _reap(entry: _Running, start: float) -> VmResult:
    """Wait for the process with ``wait4`` (its peak RSS comes with the status)."""
    _pid, status, usage = os.wait4(entry.proc.pid, 0)
    entry.proc.returncode = os.waitstatus_to_exitcode(status)
    result = entry.result
    result.exit_s = round(time.monotonic() - start, 2)
    result.returncode = entry.proc.returncode
    result.peak_rss_kib = usage.ru_maxrss
    result.output = (entry.buf.decode(errors="replace") + result.output)[-4000:]
    for stream in (entry.proc.stdout, entry.proc.stderr):
        if stream is not None:
            stream.close()
    return result


def markdown_table(results: list[VmResult], wall_s: float, smp: int, mem: str) -> str:
    """One row per VM, then min / median / max."""
    lines = [f"{len(results)} VMs started at once (`-smp {smp} -m {mem}`, vmlinux +"
             f" initramfs.cpio) on {os.cpu_count()} host CPUs; all ended after {wall_s:.1f} s",
             "", "| VM | GUEST-READY (s) | exit (s) | exit status | peak RSS (MiB) |",
             "|---|---|---|---|---|"]

    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    for r in results:
        lines.append(f"| {r.index} | {cell(r.ready_s)} | {cell(r.exit_s)} | {r.returncode} |"
                     f" {r.peak_rss_kib / 1024:.1f} |")
    for name, pick in (("min", min), ("median", statistics.median), ("max", max)):
        ready = [r.ready_s for r in results if r.ready_s is not None]
        exits = [r.exit_s for r in results if r.exit_s is not None]
        rss = [r.peak_rss_kib / 1024 for r in results]
        lines.append(f"| **{name}** | {cell(pick(ready) if ready else None)} |"
                     f" {cell(pick(exits) if exits else None)} | |"
                     f" {cell(pick(rss) if rss else None)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=common.GUEST_HELP)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--smp", type=int, default=1)
    parser.add_argument("--mem", default="256M")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    guest = common.GUEST
    results, wall = run_concurrent(guest, args.vms, args.smp, args.mem, args.timeout)
    print(markdown_table(results, wall, args.smp, args.mem))
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "vms": [
            {k: v for k, v in asdict(r).items() if k != "output"} for r in results]}, indent=1))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\nVM {r.index}: rc={r.returncode}, ready={r.ready_s}\n{r.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
