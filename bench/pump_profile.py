#!/usr/bin/env python3
"""Where StratoVMM's device CPU goes per request, under one pump job (the optimiser's map).

Three runs of the same job, the device on the main loop (no iothread: the profiler sees
the main thread; the per-request work is the same code):

1. plain: device CPU per request (``/proc``, as ``pump.py`` measures it);
2. under ``cProfile`` (its default clock, ``perf_counter``: cheap to read, and the device
   thread is pinned to a CPU of its own), seccomp off (the profile is written at exit):
   each function's share of the thread's time, waits in ``epoll`` left out, scaled to run
   1's µs per request (the profiler's own cost per call inflates functions called often
   more than others: read the shares as a map, not to the tenth);
3. under ``perf record`` (cpu-clock samples of the device thread, when perf is
   installed): the split between the interpreter, the kernel (system calls: ``preadv``'s
   copy, eventfd, irqfd) and the rest, which cProfile cannot see.

The net jobs run the VMM in the pump's network namespace (root), the rx jobs with the
pump's frame source.

usage: python bench/pump_profile.py [--job blk-randread] [--count N] [--top N] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import pump
import pumpguest
import pumpnet
import pumprun

# stratovmm.cli.main under cProfile; stats to argv[1]
PROFILED = """
import cProfile, sys
from stratovmm.cli import main
out, sys.argv = sys.argv[1], ["stratovmm", *sys.argv[2:]]
profile = cProfile.Profile()
try:
    status = profile.runcall(main)
finally:
    profile.dump_stats(out)
sys.exit(status)
"""


def args_for(job: pump.Job, elf: Path, image: Path, count: int) -> list[str]:
    """StratoVMM's arguments: the bench's, with the device on the main loop."""
    extra = (["-drive", f"id=d0,file={image},direct=on"] if job.mode == "blk"
             else ["-netdev", f"id=n0,netdev={pumpnet.TAP}"])
    cmd = common.stratovmm(1, "512M", elf, job.append(count, 128), None, extra)
    return cmd[len(common.STRATOVMM):]


def pump_once(job: pump.Job, cmd: list[str], count: int,
              on_go: Callable[[int], None] | None = None) -> pumprun.PumpRun:
    """One run of ``cmd`` (in the namespace, with a frame source, for the net jobs)."""
    if job.mode != "net":
        return pumprun.run_pump(cmd, timeout=900, on_go=on_go, pinned=True)
    source = pumpnet.FrameSource(count, job.size) if job.job == "rx" else None

    def go(pid: int) -> None:
        if on_go is not None:
            on_go(pid)
        if source is not None:
            source.go(pid)

    try:
        return pumprun.run_pump(pumpnet.wrap(cmd), timeout=900, on_go=go, pinned=True)
    finally:
        if source is not None:
            source.finish()


def device_us(run: pumprun.PumpRun) -> float:
    """Device CPU per request of one run."""
    assert run.ready is not None and run.done is not None and run.report is not None, run.output
    return pumprun.device_between(run.ready, run.done) / int(run.report["completed"]) * 1e6


def profile_rows(path: Path, scale: float, top: int) -> list[dict[str, Any]]:
    """The ``top`` functions by own CPU: share of the total, µs per request after scaling,
    calls per request."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    waits = [key for key in entries if "poll' of 'select.epoll" in key[2]]
    total = sum(row[2] for key, row in entries.items() if key not in waits)
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in entries.items():
        if (filename, line, name) in waits:
            continue
        where = "/".join(Path(filename).parts[-2:])     # virtio/device.py, not device.py
        rows.append({"function": f"{where}:{line}({name})", "calls": calls,
                     "own_share": tottime / total, "incl_share": cumtime / total})
    rows.sort(key=lambda r: -r["own_share"])
    for row in rows:
        row["own_us"] = row["own_share"] * scale
        row["incl_us"] = row["incl_share"] * scale
    return rows[:top]


def perf_split(job: pump.Job, cmd: list[str], count: int, workdir: Path) -> dict[str, Any]:
    """cpu-clock samples of the device thread over the pump's window: by DSO and by symbol."""
    data = workdir / "perf.data"
    recorder: list[subprocess.Popen[bytes]] = []

    def start(pid: int) -> None:       # no iothread: the main thread (tid = pid) serves
        recorder.append(subprocess.Popen(
            ["perf", "record", "-q", "-F", "4999", "-e", "cpu-clock", "-t", str(pid),
             "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        run = pump_once(job, cmd, count, on_go=start)
    finally:
        for proc in recorder:
            proc.send_signal(signal.SIGINT)
            proc.wait()
    out: dict[str, Any] = {"device_us": device_us(run)}
    for key in ("dso", "sym"):
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", key,
                                 "--percent-limit", "1"], capture_output=True, text=True).stdout
        out[key] = [line.strip() for line in report.splitlines()
                    if line.strip() and not line.startswith("#")][:25]
    return out


def profile_job(job: pump.Job, count: int, top: int, work: Path,
                result: dict[str, Any]) -> None:
    """The plain run, the cProfile run and the perf run of ``job``, into ``result``."""
    elf = pumpguest.build(work)
    image = work / "image.raw"
    if job.mode == "blk":
        pumpguest.make_image(image, 1 << 30)
    args = args_for(job, elf, image, count)
    plain = pump_once(job, [*common.STRATOVMM, *args], count)
    result["plain_device_us"] = scale = device_us(plain)
    stats = work / "profile.pstats"
    profiled = pump_once(
        job, [sys.executable, "-c", PROFILED, str(stats), "-disable-seccomp", *args], count)
    assert profiled.problem is None, profiled.output
    result["profiled_device_us"] = device_us(profiled)
    result["functions"] = profile_rows(stats, scale, top)
    if shutil.which("perf") and os.geteuid() == 0:
        result["perf"] = perf_split(job, [*common.STRATOVMM, *args], count, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", default="blk-randread", choices=[j for j in pump.JOBS
                                                              if pump.JOBS[j].mode != "exits"])
    ap.add_argument("--count", type=int)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out")
    a = ap.parse_args()
    job = pump.JOBS[a.job]
    count = a.count or job.count
    result: dict[str, Any] = {"job": a.job, "count": count}
    if job.mode == "net":
        pumpnet.setup()
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="pump-prof-") as tmp:
            profile_job(job, count, a.top, Path(tmp), result)
    finally:
        if job.mode == "net":
            pumpnet.teardown()
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"{a.job}, {count} requests, device on the main loop:"
          f" {result['plain_device_us']:.2f} µs/request plain,"
          f" {result['profiled_device_us']:.2f} under cProfile")
    print("\n| function | calls/request | own µs/request | incl. µs/request |\n|---|---|---|---|")
    for row in result["functions"]:
        print(f"| {row['function']} | {row['calls'] / count:.2f} | {row['own_us']:.2f} |"
              f" {row['incl_us']:.2f} |")
    if "perf" in result:
        print(f"\nperf (device thread, {result['perf']['device_us']:.2f} µs/request):")
        print("\n".join(result["perf"]["dso"]))
        print()
        print("\n".join(result["perf"]["sym"]))


if __name__ == "__main__":
    main()
