"""Run one VMM command line and measure it from the outside.

Shared by the benchmarks: wall time from just before exec to each serial
marker and to process exit, peak RSS (VmHWM), and the peak of RSS minus the
guest-RAM mapping's RSS (the VMM's own memory), sampled from /proc every 20 ms.
Works for stratovmm and qemu-system-x86_64 alike.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


@dataclass
class Measurement:
    """What one run showed."""

    markers: dict[str, float | None]
    exit_s: float
    returncode: int | None
    peak_rss_kib: int
    peak_overhead_kib: int
    output: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_at: dict[str, dict[str, float]] = field(default_factory=dict)
    probe_at: dict[str, Any] = field(default_factory=dict)


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_split(pid: int, guest_min: int) -> tuple[int, int] | None:
    """(total RSS, RSS of mappings of at least ``guest_min`` bytes) in KiB."""
    total = guest = size = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                m = _MAP.match(line)
                if m:
                    size = int(m.group(2), 16) - int(m.group(1), 16)
                elif line.startswith("Rss:"):
                    kib = int(line.split()[1])
                    total += kib
                    if size >= guest_min:
                        guest += kib
    except OSError:
        return None
    return total, guest


PROCESS = "<process>"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) per thread name of ``pid``, and under ``PROCESS`` the
    whole process's (which keeps the time of threads that have exited)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[PROCESS] = (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return out
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def run(cmd: list[str], markers: list[str], timeout: float = 300.0,
        guest_min: int = 128 << 20, stop_at: str | None = None,
        probe: Callable[[], Any] | None = None) -> Measurement:
    """Run ``cmd`` with serial on stdout until it exits (or ``stop_at`` matches).

    When a marker first matches, the per-thread CPU times of that moment are
    kept in ``cpu_at[marker]`` (for CPU-per-request figures between markers), and
    ``probe()``'s answer in ``probe_at[marker]`` (e.g. a tap's packet counters).
    """
    # a normal install has its bytecode compiled; a PYTHONDONTWRITEBYTECODE inherited from
    # a development shell would make every start recompile every module
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    found: dict[str, float | None] = {m: None for m in markers}
    buf = b""
    text = []
    peak = overhead = 0
    last = 0.0
    cpu: dict[str, float] = {}
    cpu_at: dict[str, dict[str, float]] = {}
    probe_at: dict[str, Any] = {}
    stopped = False
    while True:
        now = time.perf_counter() - t0
        if now > timeout:
            break
        if now - last > 0.02:
            peak = max(peak, _hwm(proc.pid))
            split = rss_split(proc.pid, guest_min)
            if split:
                overhead = max(overhead, split[0] - split[1])
            cpu = thread_cpu(proc.pid) or cpu
            last = now
        if sel.select(timeout=0.02):
            chunk = proc.stdout.read(65536)
            if chunk:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    s = line.decode(errors="replace").rstrip("\r")
                    text.append(s)
                    t = time.perf_counter() - t0
                    for m in markers:
                        if found[m] is None and re.search(m, s):
                            found[m] = round(t, 4)
                            cpu_at[m] = thread_cpu(proc.pid)
                            if probe is not None:
                                probe_at[m] = probe()
                    if stop_at and re.search(stop_at, s):
                        stopped = True
            elif proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
        if stopped:
            cpu = thread_cpu(proc.pid) or cpu
            proc.send_signal(signal.SIGTERM)
            break
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return Measurement(found, round(time.perf_counter() - t0, 4), proc.returncode, peak, overhead,
                       "\n".join(text), cpu, cpu_at, probe_at)
