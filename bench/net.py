#!/usr/bin/env python3
"""Issue 5 benchmark: host↔guest TCP throughput over virtio-net on a tap, and the
VMM's host CPU per packet, StratoVMM and QEMU -M microvm (tap, no vhost) side by
side in one run, same kernel, initramfs and tap.

A network namespace holds tap0 (10.0.3.1/24) and a sink/source service; the guest
(static 10.0.3.15 via ip=) sends BYTES to the sink and receives BYTES from the
source with busybox nc.  Throughput is bytes over the time between the serial
markers around each transfer; packets are the tap's own counters (independent of
the VMM); CPU is the VMM process's CPU minus its vCPU threads (the device side).
On a kvm-pvm host the guest's TCP stack is emulated and bounds the throughput;
CPU per packet is the figure that compares the VMMs.

usage: python bench/net.py [--runs N] [--bytes N] [--out FILE]   (root)
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import textwrap

import common
import fio
import vmmrun

NS = "svmm-bench"
HOST_IP, GUEST_IP = "10.0.3.1", "10.0.3.15"
SINK, SOURCE = 7001, 7002

SERVICE = textwrap.dedent("""
    import socket, sys, threading
    n = int(sys.argv[1]); SINK = int(sys.argv[2]); SOURCE = int(sys.argv[3])
    def sink():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", SINK)); s.listen()
        while True:
            c, _ = s.accept(); got = 0
            while got < n:
                b = c.recv(1 << 16)
                if not b: break
                got += len(b)
            c.close()
    def source():
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", SOURCE)); s.listen()
        while True:
            c, _ = s.accept(); c.sendall(bytes(n)); c.close()
    threading.Thread(target=sink, daemon=True).start()
    source()
""")


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def setup(nbytes: int) -> subprocess.Popen[bytes]:
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "tuntap", "add", "dev", "tap0", "mode", "tap")
    sh("ip", "-n", NS, "addr", "add", f"{HOST_IP}/24", "dev", "tap0")
    sh("ip", "-n", NS, "link", "set", "tap0", "up")
    return subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", SERVICE,
                             str(nbytes), str(SINK), str(SOURCE)])


def tap_packets() -> int:
    out = subprocess.run(["ip", "-n", NS, "-s", "-j", "link", "show", "tap0"],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["packets"] + stats["tx"]["packets"])


def guest_script(nbytes: int) -> str:
    return "\n".join([
        f"dd if=/dev/zero of=/tmp/out bs=64k count={nbytes // 65536} 2>/dev/null",
        "echo NET-BEGIN-tx", f"nc {HOST_IP} {SINK} < /tmp/out", "echo NET-END-tx",
        "echo NET-BEGIN-rx", f"nc {HOST_IP} {SOURCE} < /dev/null > /tmp/in", "echo NET-END-rx",
        "echo RX-BYTES=$(wc -c < /tmp/in)",
    ])


def commands(nbytes: int) -> dict[str, list[str]]:
    append = (f"{common.APPEND} ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off guest.cmd64="
              + base64.b64encode(guest_script(nbytes).encode()).decode())
    kernel, initrd = common.GUEST / "vmlinux", common.GUEST / "initramfs.cpio"
    wrap = ["ip", "netns", "exec", NS]
    return {
        "stratovmm": wrap + common.stratovmm(2, "256M", kernel, append, initrd,
                                             ["-netdev", "id=n0,netdev=tap0"]),
        "qemu": wrap + common.qemu(2, "256M", kernel, append, initrd, [
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
            "-device", "virtio-net-device,netdev=n0"]),
    }


def parse(m: vmmrun.Measurement, nbytes: int) -> dict[str, dict[str, float]]:
    out = {}
    for way in ("tx", "rx"):
        begin, end = f"NET-BEGIN-{way}", f"NET-END-{way}"
        if m.markers.get(begin) is None or m.markers.get(end) is None:
            continue
        seconds = m.markers[end] - m.markers[begin]  # type: ignore[operator]
        packets = m.probe_at[end] - m.probe_at[begin]
        cpu = fio.device_cpu(m.cpu_at[end]) - fio.device_cpu(m.cpu_at[begin])
        out[way] = {"mbit_s": nbytes * 8 / seconds / 1e6, "packets": packets,
                    "cpu_us_per_packet": cpu / packets * 1e6 if packets else float("nan"),
                    "cpu_us_per_mib": cpu / (nbytes / (1 << 20)) * 1e6}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(epilog=common.GUEST_HELP)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--out")
    a = ap.parse_args()
    service = setup(a.bytes)
    results: dict[str, list[dict[str, dict[str, float]]]] = {"stratovmm": [], "qemu": []}
    try:
        cmds = commands(a.bytes)
        markers = [f"NET-{w}-{d}" for d in ("tx", "rx") for w in ("BEGIN", "END")]
        for _ in range(a.runs):
            for name, cmd in cmds.items():
                m = vmmrun.run(cmd, markers, timeout=900, probe=tap_packets)
                parsed = parse(m, a.bytes)
                if len(parsed) != 2:
                    print(f"{name}: incomplete run (rc {m.returncode})\n{m.output[-3000:]}")
                results[name].append(parsed)
    finally:
        service.kill()
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    common.dump(results, a.out)
    print("| direction | Mbit/s StratoVMM | Mbit/s QEMU | device CPU µs/packet StratoVMM |"
          " QEMU | ratio | µs/MiB StratoVMM | QEMU |")
    print("|---|---|---|---|---|---|---|---|")
    for way, label in (("tx", "guest → host"), ("rx", "host → guest")):
        def med(name: str, key: str, way: str = way) -> float:
            return common.median_of(results, name, way, key)
        try:
            ours, theirs = med("stratovmm", "cpu_us_per_packet"), med("qemu", "cpu_us_per_packet")
            mib = med("stratovmm", "cpu_us_per_mib"), med("qemu", "cpu_us_per_mib")
            print(f"| {label} | {med('stratovmm', 'mbit_s'):.2f} | {med('qemu', 'mbit_s'):.2f} |"
                  f" {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |"
                  f" {mib[0]:.0f} | {mib[1]:.0f} |")
        except Exception as exc:
            print(f"| {label} | failed: {exc} |")


if __name__ == "__main__":
    main()
