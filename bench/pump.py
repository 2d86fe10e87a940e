#!/usr/bin/env python3
"""Issue 14's instrument: the request pumps, StratoVMM and QEMU -M microvm side by side.

A freestanding guest (``bench/pump/``, one x86-64 PVH ELF for both VMMs, its loops in ring
3 so they run natively on a kvm-pvm host) keeps a virtqueue full for a fixed count:

- blk: 4 KiB random read/write, 1 MiB sequential read/write, queue depth 128, indirect
  descriptors, EVENT_IDX, polling (no interrupts), on raw images (one for the read jobs,
  one for the write jobs, on tmpfs by default) that both VMMs open O_DIRECT and serve on
  an iothread;
- net: frames of 1514 and 64 bytes through a tap in a network namespace, guest → tap
  (counted by the tap) and tap → guest (written by a host frame source, counted and
  checked by the guest);
- exits: a one-vCPU loop of ``out`` to an unassigned port, reads of an unassigned MMIO
  address, and reads of a virtio-mmio register: MagicValue, and InterruptStatus (the one
  a driver reads on every interrupt) (in ring 0 by default).

The runs alternate (for each run, each job: both VMMs, StratoVMM first in odd-numbered
runs and QEMU first in even-numbered ones, so that neither always runs on the host as the
other left it).  Per job it reports
requests/s over the window between the guest's ``PUMP-READY`` and ``PUMP-DONE`` lines and
**device CPU per request**: the CPU time of the VMM's threads other than its vCPU
(``vcpu0``; QEMU's ``CPU 0/KVM``) — main loop, iothread, QEMU's aio workers — over the
same window (``/proc/PID/task/TID/schedstat``, in ns), per request.  For the exit pump:
exits/s and the vCPU thread's on-CPU time per exit (and its user part, from clock
ticks).  Also the guest's own work per request (its TSC cycles building requests and
reading results, not polling and not notifying): small against the device CPU means the
VMM, not the guest, set the pace.  Every run's guest report is checked (counts,
statuses, data, order); a run that fails a check is reported and left out of the
medians.  The vCPU thread is pinned to one CPU, the VMM's other threads to the others.

usage: python bench/pump.py [--runs N] [--jobs J,J,...] [--count N] [--qd N]
                            [--image-dir DIR] [--image-mib N] [--out FILE]   (root for net)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import common
import pumpguest
import pumpnet
import pumprun

VMMS = ("stratovmm", "qemu")


@dataclass(frozen=True)
class Job:
    """One pump job: the guest's mode and job, and its default count."""

    mode: str
    job: str
    count: int
    bs: int = 4096
    size: int = 0

    def append(self, count: int, qd: int) -> str:
        """The guest's kernel command line."""
        args = [f"pump.mode={self.mode}", f"pump.job={self.job}", f"pump.count={count}"]
        if self.mode == "blk":
            args += [f"pump.qd={qd}", f"pump.bs={self.bs}"]
        elif self.mode == "net":
            args += [f"pump.qd={qd}", f"pump.size={self.size}"]
        return " ".join(args)


JOBS = {
    "blk-randread": Job("blk", "randread", 50_000),
    "blk-randwrite": Job("blk", "randwrite", 50_000),
    "blk-seqread": Job("blk", "seqread", 10_000, bs=1 << 20),
    "blk-seqwrite": Job("blk", "seqwrite", 10_000, bs=1 << 20),
    "net-tx-1514": Job("net", "tx", 50_000, size=1514),
    "net-tx-64": Job("net", "tx", 50_000, size=64),
    "net-rx-1514": Job("net", "rx", 50_000, size=1514),
    "net-rx-64": Job("net", "rx", 50_000, size=64),
    "exit-pio": Job("exits", "pio", 200_000),
    "exit-mmio": Job("exits", "mmio", 200_000),
    "exit-mmioreg": Job("exits", "mmioreg", 200_000),
    "exit-mmiostatus": Job("exits", "mmiostatus", 200_000),
}


def commands(job: Job, elf: Path, append: str, image: Path) -> dict[str, list[str]]:
    """Both VMMs' command lines for ``job``: 1 vCPU, 512 MiB, the same guest and devices
    (``image``: the drive of a blk job)."""
    if job.mode == "blk":
        ours = ["-iothread", "id=io0", "-drive", f"id=d0,file={image},direct=on,iothread=io0"]
        theirs = ["-object", "iothread,id=io0",
                  "-drive", f"id=d0,file={image},format=raw,if=none,cache=none",
                  "-device", "virtio-blk-device,drive=d0,iothread=io0"]
    elif job.mode == "net":
        ours = ["-netdev", f"id=n0,netdev={pumpnet.TAP}"]
        theirs = ["-netdev", f"tap,id=n0,ifname={pumpnet.TAP},script=no,downscript=no,vhost=off",
                  "-device", "virtio-net-device,netdev=n0"]
    elif job.job in ("mmioreg", "mmiostatus"):
        ours = ["-rng", "random_file=/dev/urandom"]
        theirs = ["-object", "rng-random,id=r0,filename=/dev/urandom",
                  "-device", "virtio-rng-device,rng=r0"]
    else:
        ours, theirs = [], []
    cmds = {"stratovmm": common.stratovmm(1, "512M", elf, append, None, ours),
            "qemu": common.qemu(1, "512M", elf, append, None, theirs)}
    if job.mode == "net":
        cmds = {name: pumpnet.wrap(cmd) for name, cmd in cmds.items()}
    return cmds


# -- one run -----------------------------------------------------------------------------------


def measure(job: Job, cmd: list[str], count: int, image: Path,
            pinned: bool) -> dict[str, object]:
    """Run ``cmd`` once; its figures, and the problems its checks found."""
    source = None
    if job.mode == "net" and job.job == "rx":
        source = pumpnet.FrameSource(count, job.size)
    probe = pumpnet.counters if job.mode == "net" else None
    run = pumprun.run_pump(cmd, timeout=600, probe=probe,
                           on_go=source.go if source is not None else None, pinned=pinned)
    sent = source.finish() if source is not None else None
    problems = [run.problem] if run.problem else []
    if run.report is None or run.ready is None or run.done is None:
        return {"problems": problems or ["incomplete"], "tail": run.output[-2000:]}
    r = {k: int(v) if v.isdigit() else v for k, v in run.report.items()}
    done = int(r["completed"])
    wall = run.done.t - run.ready.t
    user0, sys0, run0 = run.ready.vcpu()
    user1, sys1, run1 = run.done.vcpu()
    total = max(1, int(r["tsc_total"]))
    work = int(r["tsc_busy"]) - int(r.get("tsc_kick", 0))
    kicks = int(r.get("kicks", 0))
    out: dict[str, object] = {
        "requests": done, "wall_s": wall, "per_s": done / wall,
        "device_cpu_s": pumprun.device_between(run.ready, run.done),
        "device_us": pumprun.device_between(run.ready, run.done) / done * 1e6,
        "vcpu_us": (run1 - run0) / done * 1e6,
        "vcpu_user_us": (user1 - user0) / done * 1e6, "vcpu_sys_us": (sys1 - sys0) / done * 1e6,
        # the guest's own work (not polling, not notifying), and its notifications
        "guest_busy": work / total, "guest_us": work / total * wall / done * 1e6,
        "kicks": kicks,
        "kick_us": int(r.get("tsc_kick", 0)) / total * wall / max(1, kicks) * 1e6,
        "report": r}
    problems += check(job, r, count, image)
    if job.mode == "net":
        delta = {k: run.done.probe[k] - run.ready.probe[k] for k in run.ready.probe}
        out["tap"] = delta
        if job.job == "tx" and delta["rx_packets"] != count:
            problems.append(f"the tap received {delta['rx_packets']} frames, not {count}")
        if job.job == "rx" and (sent != count or delta["tx_dropped"]):
            problems.append(f"source sent {sent}, tap dropped {delta['tx_dropped']}")
    out["problems"] = problems
    return out


ZERO_FIELDS = ("errors", "badlen", "mismatches", "spurious", "bad_used_idx", "other",
               "misordered", "corrupt")


def check(job: Job, r: Mapping[str, object], count: int, image: Path) -> list[str]:
    """What the guest's report says went wrong (empty: nothing)."""
    problems = [f"{k}={r[k]}" for k in ZERO_FIELDS if k in r and r[k] != 0]
    if r.get("completed") != count:
        problems.append(f"completed {r.get('completed')} of {count}")
    if job.mode == "blk" and job.job.endswith("write"):
        problems += sample_written(image, job, count)
    return problems


def sample_written(image: Path, job: Job, count: int, samples: int = 200) -> list[str]:
    """Every checked sector of 200 blocks the write job wrote (replayed from its seed)
    holds the write stamp."""
    size = image.stat().st_size
    lbas = list(pumpguest.lbas(job.job, count, job.bs, size // pumpguest.SECTOR))
    with open(image, "rb") as f:
        for lba in random.Random(0).sample(lbas, min(samples, len(lbas))):
            for off in pumpguest.checked_offsets(job.bs):
                sector = lba + off // pumpguest.SECTOR
                f.seek(sector * pumpguest.SECTOR)
                word = int.from_bytes(f.read(8), "little")
                if word != sector ^ pumpguest.WRITE_MAGIC:
                    return [f"sector {sector} does not hold the write stamp ({word:#x})"]
    return []


# -- the whole benchmark ------------------------------------------------------------------------


def host_state() -> dict[str, object]:
    """The load and the busiest processes right now (what else ran)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,ni,comm", "--sort=-pcpu"], capture_output=True,
                        text=True).stdout.splitlines()[1:6]
    return {"loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "top": [" ".join(line.split()) for line in ps], "time": time.strftime("%F %T")}


def run_all(jobs: list[str], runs: int, count: int | None, qd: int, images: dict[str, Path],
            elf: Path, pinned: bool) -> dict[str, dict[str, list[dict[str, object]]]]:
    """Every run of every job on both VMMs, alternating which goes first."""
    results: dict[str, dict[str, list[dict[str, object]]]] = {
        name: {vmm: [] for vmm in VMMS} for name in jobs}
    for n in range(runs):
        for name in jobs:
            job = JOBS[name]
            total = count or job.count
            append = job.append(total, qd)
            image = images["write" if job.job.endswith("write") else "read"]
            order = list(commands(job, elf, append, image).items())
            for vmm, cmd in order if n % 2 == 0 else reversed(order):
                m = measure(job, cmd, total, image, pinned)
                m["command"] = " ".join(cmd)
                results[name][vmm].append(m)
                flag = f" PROBLEMS {m['problems']}" if m["problems"] else ""
                rate = f"{m['per_s']:.0f}/s dev {m['device_us']:.2f} µs" if "per_s" in m else ""
                print(f"run {n + 1} {name} {vmm}: {rate}{flag}", flush=True)
    return results


def med(runs: list[dict[str, object]], key: str) -> float:
    """Median of ``key`` over the runs that passed their checks (nan if none)."""
    values = [float(r[key]) for r in runs if not r["problems"] and key in r]  # type: ignore[arg-type]
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, nan when theirs is 0 or missing."""
    return ours / theirs if theirs else float("nan")


def table(results: dict[str, dict[str, list[dict[str, object]]]]) -> str:
    """Markdown tables: data-path jobs, then exit jobs; ratios are StratoVMM / QEMU."""
    data = ["| job | req/s StratoVMM | req/s QEMU | ratio | device µs/req StratoVMM | QEMU |"
            " ratio | guest µs/req StratoVMM | QEMU | good runs |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    exits = ["| job | exits/s StratoVMM | exits/s QEMU | ratio | vCPU µs/exit StratoVMM | QEMU |"
             " ratio | of which user StratoVMM | QEMU | good runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_vmm in results.items():
        s, q = per_vmm["stratovmm"], per_vmm["qemu"]
        good = (f"{sum(not r['problems'] for r in s)}/{len(s)},"
                f" {sum(not r['problems'] for r in q)}/{len(q)}")
        rate = (f"| {name} | {med(s, 'per_s'):.0f} | {med(q, 'per_s'):.0f} |"
                f" {ratio(med(s, 'per_s'), med(q, 'per_s')):.2f} |")
        if JOBS[name].mode == "exits":
            sv, qv = med(s, "vcpu_us"), med(q, "vcpu_us")
            exits.append(f"{rate} {sv:.2f} | {qv:.2f} | {ratio(sv, qv):.2f} |"
                         f" {med(s, 'vcpu_user_us'):.2f} | {med(q, 'vcpu_user_us'):.2f} | {good} |")
        else:
            sd, qd = med(s, "device_us"), med(q, "device_us")
            data.append(f"{rate} {sd:.2f} | {qd:.2f} | {ratio(sd, qd):.2f} |"
                        f" {med(s, 'guest_us'):.2f} | {med(q, 'guest_us'):.2f} | {good} |")
    return "\n\n".join("\n".join(t) for t in (data, exits) if len(t) > 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated: {', '.join(JOBS)}")
    ap.add_argument("--count", type=int, help="requests per run (default: per job)")
    ap.add_argument("--qd", type=int, default=128, help="requests in flight (blk, net)")
    ap.add_argument("--image-dir", type=Path, default=Path("/dev/shm"),
                    help="where the raw image lives (default tmpfs: the host disk is not"
                         " measured)")
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--no-pin", action="store_true",
                    help="leave the VMM's threads where the scheduler puts them")
    ap.add_argument("--out")
    a = ap.parse_args()
    jobs = a.jobs.split(",")
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        ap.error(f"--jobs: unknown {', '.join(unknown)} (known: {', '.join(JOBS)})")
    needs_net = any(JOBS[j].mode == "net" for j in jobs)
    if needs_net and os.geteuid() != 0:
        ap.error("the net jobs need root (a network namespace and a tap)")
    before = host_state()
    with tempfile.TemporaryDirectory(dir=a.image_dir, prefix="pump-") as tmp:
        elf = pumpguest.build(Path(tmp))
        # reads check the pattern, so the write jobs get an image of their own
        images = {kind: Path(tmp) / f"{kind}.raw" for kind in ("read", "write")}
        for kind, image in images.items():
            if any(JOBS[j].mode == "blk" and j.endswith(kind) for j in jobs):
                pumpguest.make_image(image, a.image_mib << 20)
        if needs_net:
            pumpnet.setup()
        try:
            results = run_all(jobs, a.runs, a.count, a.qd, images, elf, not a.no_pin)
        finally:
            if needs_net:
                pumpnet.teardown()
    summary = {"host_before": before, "host_after": host_state(), "qd": a.qd,
               "pinned": not a.no_pin,
               "images": f"{a.image_mib} MiB raw in {a.image_dir}, one for the read jobs and"
                         " one for the write jobs", "results": results}
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
