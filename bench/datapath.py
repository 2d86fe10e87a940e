#!/usr/bin/env python3
"""Issue 14 benchmark: the device CPU of one virtio-blk request, with the ring's C fast path
(``STRATOVMM_FASTPATH=1``, the default) and in pure Python (``STRATOVMM_FASTPATH=0``).

``pump``: in this process, no guest: a blk device behind the real virtio-mmio transport on
bytearray guest RAM (``stratovmm.testing.harness``), a driver that posts 32 requests of
4 KiB, or one of 512 KiB in 128 pages, per kick, against a page-cached image; the CPU
time of the device's serving (``process_queue``: pop, handler, preadv/pwritev, used
ring, interrupt decision) per request.  The two paths alternate, ``--runs`` times each.

``guest``: the Linux test guest runs ``dd`` with O_DIRECT on a drive (4 KiB and 1 MiB,
read and write; each request waits for the one before, so every request is one kick,
one serve and one interrupt) under StratoVMM with each path and under QEMU microvm
(``--qemu``), alternating; device CPU per request is the VMM process's CPU minus its vCPU
threads between the serial markers around each ``dd`` (as ``fio.py``), divided by the
requests the guest's drive completed (its ``/sys/block/vda/stat``).

usage: python bench/datapath.py pump [--runs N] [--requests N]
       python bench/datapath.py guest [--runs N] [--qemu] [--before TREE] [--out F]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import struct
import tempfile
import time
from pathlib import Path

import common
import fio
import vmmrun

from stratovmm.testing.guest import boot_lock

# guest jobs: name -> dd arguments; each request waits for the one before (one kick, one
# serve, one interrupt each); the requests counted are the drive's own (/sys/block/vda/stat)
DD = {
    "read4k": "if=/dev/vda of=/dev/null bs=4k count=4000 iflag=direct",
    "write4k": "if=/dev/zero of=/dev/vda bs=4k count=4000 oflag=direct",
    "read1m": "if=/dev/vda of=/dev/null bs=1M count=100 iflag=direct",
    "write1m": "if=/dev/zero of=/dev/vda bs=1M count=100 oflag=direct",
}
# pump jobs: name -> (request type, data bytes, requests per kick); the 512 KiB requests are
# 128 buffers of 4 KiB each, as Linux sends a large request (its pages are scattered)
PUMP = {"read4k": (0, 4096, 32), "write4k": (1, 4096, 32), "read512k": (0, 512 << 10, 1),
        "write512k": (1, 512 << 10, 1)}
PAGE = 4096
PATHS = {"fast": "1", "python": "0"}


# -- pump -------------------------------------------------------------------------------------

def pump_once(kind: int, size: int, requests: int, depth: int, image: str) -> float:
    """Seconds of device CPU per request, serving ``requests`` requests ``depth`` at a time."""
    from stratovmm_blk.backend import BlockBackend
    from stratovmm_blk.device import BlockDevice

    from stratovmm.host.eventloop import EventLoop
    from stratovmm.testing.harness import DeviceHarness
    from stratovmm.testing.virtqueue import Buffer

    loop = EventLoop("pump")
    device = BlockDevice("pump", BlockBackend(image), "", loop)
    pages = size // PAGE
    h = DeviceHarness(device, memory_size=depth * (size + 2 * PAGE) + (1 << 20),
                      queue_size=1 << (depth * (pages + 2) - 1).bit_length(), loop=loop)
    h.start(event_idx=True)
    ring = h.queues[0]
    chains = []
    sectors = os.path.getsize(image) // 512 - size // 512
    for n in range(depth):
        header, status, data = h.alloc(16), h.alloc(1), h.alloc(size, PAGE)
        h.memory.write(header, struct.pack("<IIQ", kind, 0, (n * size // 512) % sectors))
        chains.append([Buffer(header, 16),
                       *(Buffer(data + PAGE * i, PAGE, kind == 0) for i in range(pages)),
                       Buffer(status, 1, True)])
    spent = 0.0
    done = 0
    while done < requests:
        for chain in chains:
            ring.add_chain(chain)
        start = time.thread_time()
        device.process_queue(0)
        spent += time.thread_time() - start
        loop.run_once(0)          # the next loop turn: a fresh serving budget
        used = ring.used_elements()
        assert len(used) == depth and all(n == (size + 1 if kind == 0 else 1)
                                          for _head, n in used), used
        done += depth
    device.close()
    loop.close()
    return spent / done


def pump(a: argparse.Namespace) -> None:
    results: dict[str, dict[str, list[float]]] = {p: {j: [] for j in PUMP} for p in PATHS}
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as image:
        image.write(os.urandom(64 << 20))
        image.flush()
        for _ in range(a.runs):
            for path, value in PATHS.items():
                os.environ["STRATOVMM_FASTPATH"] = value
                for job, (kind, size, depth) in PUMP.items():
                    count = a.requests if size <= PAGE else max(a.requests // 16, 64)
                    results[path][job].append(
                        pump_once(kind, size, count, depth, image.name) * 1e6)
    common.dump(results, a.out)
    print("| job | µs/request, C path | pure Python |")
    print("|---|---|---|")
    for job in PUMP:
        print(f"| {job} | {common.median(results['fast'][job]):.1f} |"
              f" {common.median(results['python'][job]):.1f} |")


# -- guest ------------------------------------------------------------------------------------

def guest_script() -> str:
    lines = []
    for job, args in DD.items():
        lines += [f"echo DD-STAT-{job} $(cat /sys/block/vda/stat)", f"echo DD-BEGIN-{job}",
                  f"dd {args} || echo DD-FAILED-{job}", f"echo DD-END-{job}",
                  f"echo DD-STAT-{job} $(cat /sys/block/vda/stat)"]
    return "\n".join(lines)


def commands(disk: Path) -> dict[str, list[str]]:
    append = f"{common.APPEND} guest.cmd64=" + base64.b64encode(guest_script().encode()).decode()
    kernel, initrd = common.GUEST / "vmlinux", common.GUEST / "initramfs.cpio"
    ours = common.stratovmm(1, "256M", kernel, append, initrd, [
        "-iothread", "id=io0", "-drive", f"id=disk,file={disk},direct=on,iothread=io0"])
    qemu = common.qemu(1, "256M", kernel, append, initrd, [
        "-object", "iothread,id=io0",
        "-drive", f"id=disk,file={disk},format=raw,if=none,cache=none",
        "-device", "virtio-blk-device,drive=disk,iothread=io0"])
    return {"stratovmm": ours, "qemu": qemu}


def requests(output: str, job: str) -> int | None:
    """Requests the guest's drive completed during ``job`` (reads + writes, /sys/block
    stat fields 1 and 5), or None when the job failed."""
    stats = re.findall(rf"^DD-STAT-{job} (.*)$", output, re.M)
    if len(stats) != 2 or f"DD-FAILED-{job}" in output:
        return None
    (r0, w0), (r1, w1) = ((int(f[0]), int(f[4])) for f in (s.split() for s in stats))
    return r1 - r0 + w1 - w0


def parse(m: vmmrun.Measurement) -> dict[str, dict[str, float]]:
    out = {}
    for job in DD:
        begin, end = m.cpu_at.get(f"DD-BEGIN-{job}"), m.cpu_at.get(f"DD-END-{job}")
        wall_begin, wall_end = m.markers.get(f"DD-BEGIN-{job}"), m.markers.get(f"DD-END-{job}")
        count = requests(m.output, job)
        if begin is None or end is None or wall_begin is None or wall_end is None or not count:
            continue
        cpu = fio.device_cpu(end) - fio.device_cpu(begin)
        out[job] = {"requests": count, "device_cpu_s": cpu,
                    "requests_per_s": count / (wall_end - wall_begin),
                    "cpu_us_per_request": cpu / count * 1e6}
    return out


def guest(a: argparse.Namespace) -> None:
    runs: dict[str, tuple[str, str | None]] = {"stratovmm-fast": ("stratovmm", "1"),
                                               "stratovmm-python": ("stratovmm", "0")}
    if a.before:
        runs["stratovmm-before"] = ("stratovmm", "before")
    if a.qemu:
        runs["qemu"] = ("qemu", None)
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in runs}
    markers = [f"DD-{w}-{j}" for j in DD for w in ("BEGIN", "END")]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        disk = Path(tmp) / "disk.img"
        disk.write_bytes(os.urandom(128 << 20))
        cmds = commands(disk)
        for _ in range(a.runs):
            for name, (vmm, fast) in runs.items():
                os.environ.pop("PYTHONPATH", None)
                if fast == "before":      # an earlier tree's code first on the path
                    os.environ["PYTHONPATH"] = ":".join(
                        str(p) for p in [a.before / "core", *sorted(a.before.glob("plugins/*"))])
                elif fast is not None:
                    os.environ["STRATOVMM_FASTPATH"] = fast
                with boot_lock():      # one guest at a time on a shared machine
                    m = vmmrun.run(cmds[vmm], markers, timeout=600)
                parsed = parse(m)
                if len(parsed) != len(DD):
                    print(f"{name}: incomplete run (rc {m.returncode})\n{m.output[-3000:]}")
                results[name].append(parsed)
    common.dump(results, a.out)
    print("| job | " + " | ".join(f"{name} µs/request" for name in runs) + " | requests/s |")
    print("|---|" + "---|" * (len(runs) + 1))
    for job in DD:
        try:
            cells = [f"{common.median_of(results, name, job, 'cpu_us_per_request'):.1f}"
                     for name in runs]
            rate = common.median_of(results, "stratovmm-fast", job, "requests_per_s")
            print(f"| {job} | " + " | ".join(cells) + f" | {rate:.0f} |")
        except Exception as exc:  # a run failed that job: show it, keep the rest
            print(f"| {job} | failed: {exc} |")


def main() -> None:
    ap = argparse.ArgumentParser(epilog=common.GUEST_HELP)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pump", help="in-process request pump, both paths")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--out")
    g = sub.add_parser("guest", help="dd in the Linux guest, both paths (and QEMU)")
    g.add_argument("--runs", type=int, default=2)
    g.add_argument("--qemu", action="store_true")
    g.add_argument("--before", type=Path, help="also run StratoVMM from this source tree (e.g."
                   " 'git archive' of an earlier commit, its compiled modules copied in)")
    g.add_argument("--out")
    a = ap.parse_args()
    pump(a) if a.what == "pump" else guest(a)


if __name__ == "__main__":
    main()
