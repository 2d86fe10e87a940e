#!/usr/bin/env python3
"""Issue 14's start-up and memory rows, QEMU microvm and StratoVMM in one run:

(a) exec → first guest byte on the serial line (``first-byte-guest.S``, a PVH ELF
    that writes "X" and resets), 1 vCPU / 256 MiB;
(b) the VMM's memory overhead while booting the Linux guest (2 vCPU / 512 MiB,
    ``vmlinux`` + ``initramfs.cpio``): the peak of RSS minus the guest-RAM
    mapping's RSS, sampled every 20 ms until the guest's ``reboot -f`` ends it.

Every round runs each VMM once, in turn, so the host's load (other jobs on a
shared machine) hits all of them alike; medians and ratios to QEMU are printed.
``--tree NAME=DIR`` adds another StratoVMM source tree (a checkout with its cffi
modules built in place, e.g. the commit before a change) run from the same
interpreter with ``PYTHONPATH`` on its ``core/`` and ``plugins/*/`` directories, so
"before" and "after" are measured in the same run.  Linux boots take the
machine-wide boot lock (``/tmp/stratovmm-boot.lock``) as the tests do.
``--no-boot-lock`` boots without it.  ``--variant NAME=ARGS`` adds the installed
StratoVMM again with ``ARGS`` appended to its command line (e.g.
``nofilter=-disable-seccomp``: what the filter costs a start, measured in pairs).
``--importtime`` also prints the slowest imports (``python -X importtime``,
cumulative, median of 5 starts) of each StratoVMM for the first-byte command.

usage: python bench/startup.py [--first-byte-runs N] [--boot-runs N]
                               [--tree NAME=DIR ...] [--variant NAME=ARGS ...]
                               [--importtime] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import common
import vmmrun
from boot import build_first_byte

from stratovmm.testing.guest import BOOT_LOCK, file_lock


def tree_path(tree: Path) -> str:
    """PYTHONPATH that makes ``tree``'s core and plugins shadow the installed ones."""
    return os.pathsep.join([str(tree / "core"),
                            *sorted(str(p) for p in (tree / "plugins").iterdir() if p.is_dir())])


@contextlib.contextmanager
def python_path(value: str | None) -> Iterator[None]:
    """``PYTHONPATH`` set to ``value`` (unset for None) while the block runs."""
    old = os.environ.pop("PYTHONPATH", None)
    if value is not None:
        os.environ["PYTHONPATH"] = value
    try:
        yield
    finally:
        os.environ.pop("PYTHONPATH", None)
        if old is not None:
            os.environ["PYTHONPATH"] = old


Contender = tuple[str, str | None, list[str]]
"""(name, PYTHONPATH or None, extra arguments) of one StratoVMM."""


def contenders(trees: list[str], variants: Sequence[str] = ()) -> list[Contender]:
    """Each StratoVMM: the installed one, each ``--tree``, then each ``--variant``."""
    out: list[Contender] = [("stratovmm", None, [])]
    for spec in trees:
        name, _, directory = spec.partition("=")
        out.append((name, tree_path(Path(directory).resolve()), []))
    for spec in variants:
        name, _, args = spec.partition("=")
        out.append((name, None, args.split()))
    return out


def first_byte(runs: int, elf: Path, vmms: list[Contender]) -> dict[str, list[float]]:
    """Seconds from exec to the guest's "X", per VMM."""
    everyone: list[Contender] = [*vmms, ("qemu", None, [])]
    results: dict[str, list[float]] = {name: [] for name, _, _ in everyone}
    for round_ in range(runs + 1):
        for name, path, extra in everyone:
            builder = common.qemu if name == "qemu" else common.stratovmm
            with python_path(path):
                m = vmmrun.run(builder(1, "256M", elf, None, None, extra), ["^X"], timeout=30)
            # round 0 warms up: bytecode written, entry point cache filled, files cached
            if round_ and m.markers["^X"] is not None:
                results[name].append(m.markers["^X"])
    return results


def boot_overhead(runs: int, vmms: list[Contender], lock: bool = True
                  ) -> dict[str, list[float]]:
    """Peak VMM overhead (MiB) over a Linux boot to its reboot, per VMM."""
    kernel, initrd = common.GUEST / "vmlinux", common.GUEST / "initramfs.cpio"
    everyone: list[Contender] = [*vmms, ("qemu", None, [])]
    results: dict[str, list[float]] = {name: [] for name, _, _ in everyone}
    for _ in range(runs):
        for name, path, extra in everyone:
            builder = common.qemu if name == "qemu" else common.stratovmm
            with python_path(path), file_lock(BOOT_LOCK) if lock else contextlib.nullcontext():
                m = vmmrun.run(builder(2, "512M", kernel, common.APPEND, initrd, extra),
                               ["GUEST-READY"], timeout=300)
            if m.markers["GUEST-READY"] is None:
                print(f"{name}: no GUEST-READY (rc {m.returncode})", file=sys.stderr)
                continue
            results[name].append(m.peak_overhead_kib / 1024)
            print(f"{name}: {results[name][-1]:.1f} MiB (ready {m.markers['GUEST-READY']} s)",
                  file=sys.stderr, flush=True)
    return results


_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime(elf: Path, path: str | None, top: int = 15, starts: int = 5
               ) -> list[tuple[str, float]]:
    """The ``top`` imports by cumulative time (median over ``starts``, ms), and under
    ``"(all imports)"`` the sum of every module's own time."""
    # the same entry as the runs (the console script, else -m), so sys.path matches
    entry = common.STRATOVMM if common.STRATOVMM[0] != sys.executable else common.STRATOVMM[1:]
    cmd = [sys.executable, "-X", "importtime", *entry,
           *common.stratovmm(1, "256M", elf, None, None)[len(common.STRATOVMM):]]
    samples: dict[str, list[float]] = {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if path is not None:
        env["PYTHONPATH"] = path
    for _ in range(starts):
        err = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL).stderr
        total = 0.0
        for line in err.splitlines():
            m = _IMPORT.match(line)
            if m:
                samples.setdefault(m.group(4), []).append(int(m.group(2)) / 1000)
                total += int(m.group(1)) / 1000
        samples.setdefault("(all imports)", []).append(total)
    ranked = sorted(((k, common.median(v)) for k, v in samples.items()), key=lambda kv: -kv[1])
    return ranked[:top + 1]


def table(rows: dict[str, dict[str, list[float]]], vmms: list[str]) -> str:
    """Medians and ratios to QEMU."""
    lines = ["| measure (median) | " + " | ".join(vmms) + " | QEMU | "
             + " | ".join(f"{v} / QEMU" for v in vmms) + " |",
             "|---" * (2 * len(vmms) + 2) + "|"]
    for label, per_vmm in rows.items():
        if not per_vmm["qemu"]:
            continue
        theirs = common.median(per_vmm["qemu"])
        ours = [common.median(per_vmm[v]) if per_vmm[v] else float("nan") for v in vmms]
        lines.append(f"| {label} | " + " | ".join(f"{o:.1f}" for o in ours)
                     + f" | {theirs:.1f} | " + " | ".join(f"{o / theirs:.2f}" for o in ours)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(epilog=common.GUEST_HELP)
    ap.add_argument("--first-byte-runs", type=int, default=10)
    ap.add_argument("--boot-runs", type=int, default=10)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS")
    ap.add_argument("--importtime", action="store_true")
    ap.add_argument("--no-boot-lock", action="store_true",
                    help="boot without waiting for the machine-wide boot lock (flock is not"
                    " fair: a busy test run can hold the benchmark off for good)")
    ap.add_argument("--out")
    a = ap.parse_args()
    vmms = contenders(a.tree, a.variant)
    names = [name for name, _, _ in vmms]
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_first_byte(Path(tmp))
        imports = ({name: importtime(elf, path) for name, path, extra in vmms if not extra}
                   if a.importtime else {})
        fb = first_byte(a.first_byte_runs, elf, vmms)
    boot = (boot_overhead(a.boot_runs, vmms, not a.no_boot_lock) if a.boot_runs
            else {n: [] for n in [*names, "qemu"]})
    load = os.getloadavg()
    common.dump({"first_byte_s": fb, "overhead_mib": boot, "importtime_ms": imports,
                 "loadavg_at_end": load}, a.out)
    ms = {k: [x * 1000 for x in v] for k, v in fb.items()}
    print(table({"exec → first serial byte (ms)": ms,
                 "VMM memory overhead, Linux boot (MiB)": boot}, names))
    for name, ranked in imports.items():
        print(f"\n{name}: -X importtime, cumulative ms (median of 5)")
        for module, ms_ in ranked:
            print(f"  {ms_:7.1f}  {module}")
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
