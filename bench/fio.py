#!/usr/bin/env python3
"""Issue 3 benchmark: fio inside the guest on a virtio-blk drive, StratoVMM and QEMU
-M microvm side by side in one run, on the same kernel, initramfs and images.

Per job (4 KiB random read and write at iodepth 8, 1 MiB sequential read and write at
iodepth 4; libaio, O_DIRECT in the guest; the drive O_DIRECT on the host and served
by an iothread in both VMMs) it reports the guest's IOPS and the host CPU time the
VMM's device threads (every thread but the vCPUs) spent per request, read from
/proc/PID/task/*/stat at the serial markers that bracket the job.  On this host the
guest kernel is emulated, so guest IOPS are bound by the guest; CPU per request is
the figure that compares the VMMs.

fio comes from tools.ext4 (Debian's fio with its libraries, made by
``stratovmm-guest build --stages disks``).

usage: python bench/fio.py --tools PATH/tools.ext4 [--runs N] [--runtime S] [--out F]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import common
import vmmrun

JOBS = {
    "randread": "--rw=randread --bs=4k --iodepth=8",
    "randwrite": "--rw=randwrite --bs=4k --iodepth=8",
    "seqread": "--rw=read --bs=1M --iodepth=4",
    "seqwrite": "--rw=write --bs=1M --iodepth=4",
}


def guest_script(runtime: int) -> str:
    lines = ["mount -o ro /dev/vda /mnt"]
    for job, args in JOBS.items():
        lines += [
            f"echo FIO-BEGIN-{job}",
            # terse: one ;-separated line (every console byte is an emulated UART access,
            # and busybox text tools in the guest crash now and then on kvm-pvm hosts)
            f"/mnt/fio/run-fio --name={job} --filename=/dev/vdb --ioengine=libaio --direct=1 "
            f"{args} --runtime={runtime} --time_based --output-format=terse > /tmp/{job}.out",
            f"echo FIO-END-{job}",
            f"echo FIO-RESULT-{job}; cat /tmp/{job}.out",
        ]
    return "\n".join(lines)


def is_vcpu(thread: str) -> bool:
    """vCPU threads (ours vcpuN, QEMU's 'CPU N/KVM') and KVM's own kernel threads."""
    return bool(re.match(r"vcpu\d+$|CPU \d+/KVM$|kvm-", thread))


def device_cpu(snapshot: dict[str, float]) -> float:
    """Process CPU minus the vCPU threads: the device threads, including QEMU's
    short-lived aio workers whose time only the process total still holds."""
    vcpus = sum(t for name, t in snapshot.items() if name != vmmrun.PROCESS and is_vcpu(name))
    return snapshot.get(vmmrun.PROCESS, 0.0) - vcpus


def parse(m: vmmrun.Measurement) -> dict[str, dict[str, float]]:
    out = {}
    for job in JOBS:
        found = re.search(rf"^FIO-RESULT-{job}\n(3;fio-[^\n]*)$", m.output, re.M)
        begin, end = m.cpu_at.get(f"FIO-BEGIN-{job}"), m.cpu_at.get(f"FIO-END-{job}")
        if not found or begin is None or end is None:
            continue
        terse = found.group(1).split(";")
        # terse v3: read KiB/bw/IOPS/runtime-ms at fields 6-9, write's at 47-50 (1-based)
        iops = float(terse[7]) + float(terse[48])
        ios = round(float(terse[7]) * float(terse[8]) / 1000
                    + float(terse[48]) * float(terse[49]) / 1000)
        cpu = device_cpu(end) - device_cpu(begin)
        out[job] = {"iops": iops, "ios": ios, "device_cpu_s": cpu,
                    "cpu_us_per_request": cpu / ios * 1e6 if ios else float("nan")}
    return out


def commands(tools: Path, disk: Path, runtime: int) -> dict[str, list[str]]:
    append = f"{common.APPEND} guest.cmd64=" + __import__("base64").b64encode(
        guest_script(runtime).encode()).decode()
    kernel, initrd = common.GUEST / "vmlinux", common.GUEST / "initramfs.cpio"
    ours = common.stratovmm(2, "512M", kernel, append, initrd, [
        "-iothread", "id=io0",
        "-drive", f"id=tools,file={tools},readonly=on",
        "-drive", f"id=disk,file={disk},direct=on,iothread=io0"])
    qemu = common.qemu(2, "512M", kernel, append, initrd, [
        "-object", "iothread,id=io0",
        "-drive", f"id=tools,file={tools},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=tools",
        "-drive", f"id=disk,file={disk},format=raw,if=none,cache=none",
        "-device", "virtio-blk-device,drive=disk,iothread=io0"])
    return {"stratovmm": ours, "qemu": qemu}


def main() -> None:
    ap = argparse.ArgumentParser(epilog=common.GUEST_HELP)
    ap.add_argument("--tools", required=True, type=Path)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--runtime", type=int, default=10)
    ap.add_argument("--out")
    a = ap.parse_args()
    results: dict[str, list[dict[str, dict[str, float]]]] = {"stratovmm": [], "qemu": []}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        disk = Path(tmp) / "disk.img"
        with open(disk, "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))
        cmds = commands(a.tools, disk, a.runtime)
        for _ in range(a.runs):
            for name, cmd in cmds.items():
                m = vmmrun.run(cmd, [f"FIO-{w}-{j}" for j in JOBS for w in ("BEGIN", "END")],
                               timeout=600)
                parsed = parse(m)
                if len(parsed) != len(JOBS):
                    print(f"{name}: incomplete run (rc {m.returncode})\n{m.output[-3000:]}")
                results[name].append(parsed)
    common.dump(results, a.out)
    print("| job | guest IOPS StratoVMM | guest IOPS QEMU | device CPU µs/request StratoVMM |"
          " QEMU | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for job in JOBS:
        def med(name: str, key: str, job: str = job) -> float:
            return common.median_of(results, name, job, key)
        try:
            ours_cpu, qemu_cpu = med("stratovmm", "cpu_us_per_request"), med("qemu",
                                                                             "cpu_us_per_request")
            print(f"| {job} | {med('stratovmm', 'iops'):.0f} | {med('qemu', 'iops'):.0f} |"
                  f" {ours_cpu:.1f} | {qemu_cpu:.1f} | {ours_cpu / qemu_cpu:.2f} |")
        except Exception as exc:  # a VMM failed that job: show it, keep the rest
            print(f"| {job} | failed: {exc} |")


if __name__ == "__main__":
    main()
