"""The network side of the net pump: a tap in its own network namespace, its counters,
and a frame source that writes the pump's frames into the tap for the guest to receive.

The tap has no address and IPv6 is off on it, so the host's kernel sends nothing of its
own through it: what the VMM reads from the tap are the source's frames, and what it
writes is counted in the tap's receive counters (the kernel then drops the frames: no
protocol takes EtherType 0x88B5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

NS = "svmm-pump"
TAP = "tap0"

# Sends COUNT frames of SIZE bytes on the tap (AF_PACKET), after a line on stdin, keeping at
# most WINDOW frames that the VMM has not yet read (the tap's tx_packets counts the frames
# read), so the tap's queue (txqueuelen 1000) never overflows and drops.
SOURCE = textwrap.dedent("""
    import os, socket, sys, time
    tap, count, size, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((tap, 0))
    mac = open(f"/sys/class/net/{tap}/address").read().strip()
    src = bytes.fromhex(mac.replace(":", ""))
    payload = bytearray((i * 7 + 1) & 0xFF for i in range(size - 14))
    payload[4:8] = (0x706D7570).to_bytes(4, "little")
    frame = bytearray(b"\\xff" * 6 + src + b"\\x88\\xb5" + payload)
    counter = os.open(f"/sys/class/net/{tap}/statistics/tx_packets", os.O_RDONLY)
    def read_count():
        return int(os.pread(counter, 32, 0))
    print("ready", flush=True)
    sys.stdin.readline()
    base, sent = read_count(), 0
    while sent < count:
        room = window - (sent - (read_count() - base))
        if room <= 0:
            time.sleep(0.0002)
            continue
        for _ in range(min(room, count - sent)):
            frame[14:18] = sent.to_bytes(4, "little")
            s.send(frame)
            sent += 1
    print("sent", sent, flush=True)
""")


def sh(*args: str) -> None:
    """Run a command; its failure is an error."""
    subprocess.run(args, check=True)


def setup() -> None:
    """The namespace and its tap, up, with no address and IPv6 off."""
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap")
    sh("ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
    sh("ip", "-n", NS, "link", "set", TAP, "up")


def teardown() -> None:
    """Remove the namespace (and the tap with it)."""
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)


def wrap(cmd: list[str]) -> list[str]:
    """``cmd`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
    return ["ip", "netns", "exec", NS, *cmd]


def counters() -> dict[str, int]:
    """The tap's packet counters: rx = frames the VMM wrote, tx = frames the VMM read."""
    out = subprocess.run(["ip", "-n", NS, "-s", "-j", "link", "show", TAP],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return {"rx_packets": int(stats["rx"]["packets"]), "tx_packets": int(stats["tx"]["packets"]),
            "tx_dropped": int(stats["tx"]["dropped"])}


class FrameSource:
    """The frame source, started and waiting for ``go``."""

    def __init__(self, count: int, size: int, window: int = 256) -> None:
        self.proc = subprocess.Popen(
            wrap([sys.executable, "-c", SOURCE, TAP, str(count), str(size), str(window)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the frame source did not start: {line!r}")

    def go(self, _vmm_pid: int = 0) -> None:
        """Start sending (called with the VMM's pid, which it does not need)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 10.0) -> int:
        """Frames sent (after the guest has them all), or -1 if the source failed."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1
        words = out.split()
        return int(words[1]) if len(words) == 2 and words[0] == "sent" else -1
