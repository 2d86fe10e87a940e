#!/usr/bin/env python3
"""Issue 2 benchmarks, StratoVMM and QEMU -M microvm side by side in one run:

(a) exec → first guest byte on the serial line (a tiny PVH guest that prints "X");
(b) the VMM's memory overhead while booting the Linux guest: peak of RSS minus
    the guest-RAM mapping's RSS;
(c) wall time to GUEST-READY and to process exit after the guest's reboot -f.

Runs alternate between the two VMMs so drift on this host hits both alike.
Prints a JSON summary and a markdown table (ratios StratoVMM / QEMU).

usage: python bench/boot.py [--runs N] [--first-byte-runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import common
import vmmrun

FIRST_BYTE_S = Path(__file__).resolve().parent / "first-byte-guest.S"


def build_first_byte(tmp: Path) -> Path:
    out = tmp / "first-byte-guest.elf"
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,-Ttext=0x100000",
                    "-Wl,--build-id=none", "-o", str(out), str(FIRST_BYTE_S)], check=True)
    return out


def first_byte(runs: int, tmp: Path) -> dict[str, list[float]]:
    elf = build_first_byte(tmp)
    results: dict[str, list[float]] = {"stratovmm": [], "qemu": []}
    for _ in range(runs):
        for name, cmd in (("stratovmm", common.stratovmm(1, "256M", elf, None, None)),
                          ("qemu", common.qemu(1, "256M", elf, None, None))):
            m = vmmrun.run(cmd, ["^X"], timeout=30)
            if m.markers["^X"] is not None:
                results[name].append(m.markers["^X"])
    return results


def linux_boot(runs: int) -> dict[str, list[dict[str, float]]]:
    kernel, initrd = common.GUEST / "vmlinux", common.GUEST / "initramfs.cpio"
    results: dict[str, list[dict[str, float]]] = {"stratovmm": [], "qemu": []}
    for _ in range(runs):
        for name, builder in (("stratovmm", common.stratovmm), ("qemu", common.qemu)):
            cmd = builder(2, "512M", kernel, common.APPEND, initrd)
            m = vmmrun.run(cmd, ["GUEST-READY"], timeout=300)
            ready = m.markers["GUEST-READY"]
            if ready is None:
                print(f"{name}: no GUEST-READY (rc {m.returncode})\n{m.output[-2000:]}")
                continue
            results[name].append({"ready_s": ready, "exit_s": m.exit_s,
                                  "peak_rss_mib": m.peak_rss_kib / 1024,
                                  "overhead_mib": m.peak_overhead_kib / 1024})
    return results


def table(fb: dict[str, list[float]], lb: dict[str, list[dict[str, float]]]) -> str:
    def med(name: str, key: str) -> float:
        return common.median([r[key] for r in lb[name]])

    rows = [("exec → first serial byte (ms)", common.median(fb["stratovmm"]) * 1000,
             common.median(fb["qemu"]) * 1000)]
    for key, label in (("ready_s", "boot to GUEST-READY (s)"), ("exit_s", "to process exit (s)"),
                       ("overhead_mib", "VMM memory overhead (MiB)"),
                       ("peak_rss_mib", "peak RSS (MiB)")):
        rows.append((label, med("stratovmm", key), med("qemu", key)))
    lines = ["| measure (median) | StratoVMM | QEMU microvm | ratio |", "|---|---|---|---|"]
    for label, ours, theirs in rows:
        lines.append(f"| {label} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(epilog=common.GUEST_HELP)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--first-byte-runs", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fb = first_byte(a.first_byte_runs, Path(tmp))
    lb = linux_boot(a.runs)
    summary = {"first_byte_s": fb, "linux_boot": lb}
    common.dump(summary, a.out)
    print(table(fb, lb))


if __name__ == "__main__":
    main()
