"""virtio-net with the real Linux guest, in a network namespace made for the test.

One boot checks everything (boots are expensive here): the namespace holds three
taps: ``tap0`` with a DHCP server (dnsmasq) that leases 10.0.3.15 to the guest's
``ip=dhcp``, ``tap1`` behind a NIC from the JSON file (explicit MAC, checked in
the guest), and ``tap2``.  The two cold NICs fill both ``virtio-net-mmio`` slots
(the JSON file's first: slot 0), as in StratoVirt, so QMP removes the JSON NIC
with ``device_del`` and hot-plugs ``tap2`` into its slot while the guest runs.
The guest pings the host; the host pings the guest; 1 MiB goes each way through
busybox ``nc`` and the md5 sums must match; the slot's link goes down when the
cold NIC goes, comes up with ``tap2`` (carrier), carries a ping, and goes down
again at ``device_del``.  Needs root (namespaces, taps), ``ip``, ``dnsmasq``,
busybox.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stratovmm.testing.guest import (
    HOST_APPEND,
    HOST_CPU,
    boot_lock,
    cmd_arg,
    stratovmm_command,
)
from stratovmm.testing.qmp import QmpTestClient

CLONE_NEWNET = 0x40000000
HOST_IP, GUEST_IP, HP_HOST_IP, HP_GUEST_IP = "10.0.3.1", "10.0.3.15", "10.0.4.1", "10.0.4.2"
JSON_MAC = "52:54:00:ab:cd:01"
VM_NAME = "nettest"
BULK = 1 << 20
SINK_PORT, SOURCE_PORT, RELEASE_PORT = 7001, 7002, 7100
T = TypeVar("T")

GUEST_SCRIPT = f"""
ifmac() {{
  for i in /sys/class/net/*; do read -r a < $i/address; [ "$a" = "$1" ] && echo ${{i##*/}}; done
}}
carrier() {{
  n=0; c=x
  while [ $n -lt 300 ]; do
    read -r c < /sys/class/net/$HP/carrier; [ "$c" = "$1" ] && break; sleep 0.1; n=$((n+1))
  done
  echo "HP-CARRIER=$c"
}}
WAN=$(ifmac MAC_WAN); J=$(ifmac {JSON_MAC}); HP=$J
echo "IFACES wan=$WAN json=$J"
ip -4 -o addr show dev $WAN
ping -c 3 -W 5 {HOST_IP} >/dev/null; echo PING-RC=$?
dd if=/dev/urandom of=/tmp/out bs=64k count={BULK // 65536} 2>/dev/null
echo "OUT-MD5 $(md5sum < /tmp/out)"
nc {HOST_IP} {SINK_PORT} < /tmp/out; echo SEND-RC=$?
nc {HOST_IP} {SOURCE_PORT} < /dev/null > /tmp/in; echo RECV-RC=$?
echo "IN-MD5 $(md5sum < /tmp/in)"
echo HOST-PING-WAIT
nc -l -p {RELEASE_PORT} < /dev/null > /dev/null; echo HOST-PING-DONE
ip link set $HP up
carrier 1
echo COLD-DEL-WAIT
carrier 0
echo HOTPLUG-WAIT
carrier 1
ip addr add {HP_GUEST_IP}/24 dev $HP
ping -c 2 -W 5 {HP_HOST_IP} >/dev/null; echo HP-PING-RC=$?
echo UNPLUG-WAIT
carrier 0
"""


# -- host plumbing ------------------------------------------------------------------------------


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that joined namespace ``ns`` (sockets it makes stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[Any] = []

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            result.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if not result:
        raise TimeoutError(f"no result within 60 s in namespace {ns}")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


def listener(ns: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST_IP, port))
        sock.listen(1)
        sock.settimeout(600)
        return sock
    return in_netns(ns, make)


def ns_run(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout)


def ip_run(*argv: str, check: bool = True) -> None:
    """``ip ARGV``, which must end (and, with ``check``, succeed) within a minute."""
    subprocess.run(["ip", *argv], check=check, timeout=60)


@dataclass
class Netns:
    name: str
    dnsmasq: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netns]:
    """A namespace with tap0 (10.0.3.1 + dnsmasq), tap1 and tap2 (10.0.4.1); removed after."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces and taps need root")
    for tool in ("ip", "dnsmasq", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    name = f"svmmnet{os.getpid()}"
    ip_run("netns", "add", name)
    dnsmasq = None
    try:
        ns_run(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        ns_run(name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        ip_run("-n", name, "link", "set", "lo", "up")
        for tap, addr in (("tap0", HOST_IP), ("tap1", None), ("tap2", HP_HOST_IP)):
            ip_run("-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
            if addr:
                ip_run("-n", name, "addr", "add", f"{addr}/24", "dev", tap)
            ip_run("-n", name, "link", "set", tap, "up")
        work = tmp_path_factory.mktemp("dnsmasq")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", name, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
             "--port=0", "--interface=tap0", "--bind-interfaces", "--pid-file=",
             f"--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h",
             f"--dhcp-leasefile={work / 'leases'}", "--log-dhcp"],
            stdout=open(work / "dnsmasq.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        yield Netns(name, dnsmasq)
    finally:
        if dnsmasq is not None:
            dnsmasq.send_signal(signal.SIGTERM)
            dnsmasq.wait(10)
        ip_run("netns", "del", name, check=False)


# -- the VMM and its console -------------------------------------------------------------------


class Console:
    """The VMM's stdout, line by line, readable while the guest runs."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
                self._cond.notify_all()

    def wait_for(self, marker: str, timeout: float) -> str:
        """The first line containing ``marker``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if marker in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no {marker!r} on the console:\n" +
                                         "\n".join(self.lines[-40:]))
                self._cond.wait(min(remaining, 1.0))

    def value(self, key: str) -> str:
        """``VALUE`` of the console line ``KEY=VALUE`` or ``KEY VALUE``."""
        line = self.wait_for(key, 0)
        return re.split(r"[= ]", line.split(key, 1)[1].strip(" ="), maxsplit=1)[0]


@dataclass
class Outcome:
    console: Console
    returncode: int
    stderr: str
    received_md5: str = ""
    sent_md5: str = hashlib.md5(b"").hexdigest()
    host_ping: subprocess.CompletedProcess[str] | None = None
    qmp: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def stdout(self) -> str:
        """The guest console so far (where tests/hostfault.py looks for a guest fault)."""
        return "\n".join(self.console.lines)


def serve_sink(sock: socket.socket, into: dict[str, str]) -> None:
    """Read one connection to EOF; record its md5 (or why there is none)."""
    digest = hashlib.md5()
    try:
        conn, _ = sock.accept()
        with conn:
            while chunk := conn.recv(65536):
                digest.update(chunk)
    except OSError as exc:              # the guest never came, or the test gave up
        into["error"] = str(exc)
        return
    into["md5"] = digest.hexdigest()


def serve_source(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` to one connection, then close it."""
    try:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(data)
    except OSError:
        return                          # the guest's md5 shows it


def release_guest(ns: str, timeout: float = 60) -> None:
    """Connect to the guest's ``nc -l`` (retrying until it listens) and hang up."""
    def connect() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((GUEST_IP, RELEASE_PORT), timeout=5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    in_netns(ns, connect)


@pytest.fixture(scope="module")
def outcome(netns: Netns, guest: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """Boot once, drive the script above from the host side, and keep what happened."""
    work = tmp_path_factory.mktemp("net-guest")
    qmp_path = str(work / "qmp.sock")
    (work / "vm.json").write_text(json.dumps({"net": [
        {"iface_id": "net1", "host_dev_name": "tap1", "mac": JSON_MAC}]}))
    wan_mac = "52:54:00:ab:cd:00"
    script = GUEST_SCRIPT.replace("MAC_WAN", wan_mac)
    data = random.Random(5).randbytes(BULK)
    sink, source = listener(netns.name, SINK_PORT), listener(netns.name, SOURCE_PORT)
    received: dict[str, str] = {}
    servers = [threading.Thread(target=serve_sink, args=(sink, received), daemon=True),
               threading.Thread(target=serve_source, args=(source, data), daemon=True)]
    for server in servers:
        server.start()
    argv = ["ip", "netns", "exec", netns.name, *stratovmm_command(), "-name", VM_NAME,
            "-smp", "2", "-cpu", HOST_CPU, "-m", "256M", "-kernel", str(guest / "vmlinux"),
            "-initrd", str(guest / "initramfs.cpio"), "-serial", "stdio",
            "-config", str(work / "vm.json"), "-iothread", "id=io0",
            "-netdev", f"id=net0,netdev=tap0,mac={wan_mac},iothread=io0",
            "-api-channel", f"unix:{qmp_path}",
            "-append", f"{HOST_APPEND} ip=dhcp {cmd_arg(script)}"]
    with boot_lock():
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=open(work / "vmm.stderr", "wb"),  # noqa: SIM115
                                env={**os.environ, "STRATOVMM_LOG_LEVEL": "warn"})
        console = Console(proc)
        result = Outcome(console, -1, "")
        try:
            with QmpTestClient(qmp_path, timeout=60) as qmp:
                console.wait_for("HOST-PING-WAIT", 400)
                result.qmp["stats"] = qmp.command("query-stats", {"target": "device",
                                                                  "devices": ["net0"]})
                result.host_ping = ns_run(netns.name, "busybox", "ping", "-c", "3", "-W", "5",
                                          GUEST_IP)
                release_guest(netns.name)
                console.wait_for("COLD-DEL-WAIT", 120)
                result.qmp["cold_del"] = qmp.command("device_del", {"id": "net1"})
                if "return" in result.qmp["cold_del"]:
                    result.qmp["cold_event"] = qmp.wait_event("DEVICE_DELETED", 30)
                console.wait_for("HOTPLUG-WAIT", 120)
                result.qmp["netdev_add"] = qmp.command("netdev_add",
                                                       {"id": "hp0", "ifname": "tap2"})
                result.qmp["device_add"] = qmp.command(
                    "device_add", {"driver": "virtio-net-mmio", "id": "nic-hp",
                                   "netdev": "hp0", "addr": "0x0"})
                console.wait_for("UNPLUG-WAIT", 120)
                result.qmp["device_del"] = qmp.command("device_del", {"id": "nic-hp"})
                if "return" in result.qmp["device_del"]:
                    result.qmp["event"] = qmp.wait_event("DEVICE_DELETED", 30)
            result.returncode = proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            result.wall = time.monotonic() - start
    result.stderr = (work / "vmm.stderr").read_text(errors="replace")
    for server in servers:
        server.join(5)
    sink.close()
    source.close()
    result.received_md5 = received.get("md5", received.get("error", ""))
    result.sent_md5 = hashlib.md5(data).hexdigest()
    return result


# -- what the guest and the host saw -----------------------------------------------------------


def test_guest_takes_a_dhcp_lease(outcome: Outcome) -> None:
    """ip=dhcp over virtio-net: the guest's NIC has the address dnsmasq leases."""
    line = outcome.console.wait_for("inet ", 0)
    assert f"inet {GUEST_IP}/24" in line


def test_nics_from_cmdline_and_json_have_their_macs(outcome: Outcome) -> None:
    """The -netdev MAC and the JSON file's MAC are what the guest sees in config space
    (each found by its MAC)."""
    line = outcome.console.wait_for("IFACES", 0)
    found = dict(part.split("=", 1) for part in line.split()[1:])
    assert all(found[key].startswith("eth") for key in ("wan", "json")), line
    assert len(set(found.values())) == 2


def test_ping_both_ways(outcome: Outcome) -> None:
    """The guest pings the host, and the host pings the guest."""
    assert outcome.console.value("PING-RC") == "0"
    assert outcome.host_ping is not None
    assert outcome.host_ping.returncode == 0, outcome.host_ping.stdout
    assert "3 packets received" in outcome.host_ping.stdout


def test_bulk_guest_to_host_arrives_intact(outcome: Outcome) -> None:
    """1 MiB from the guest's nc reaches the host with the md5 the guest computed."""
    assert outcome.console.value("SEND-RC") == "0"
    guest_md5 = outcome.console.value("OUT-MD5")
    assert outcome.received_md5 == guest_md5


def test_bulk_host_to_guest_arrives_intact(outcome: Outcome) -> None:
    """1 MiB from the host reaches the guest's nc with the same md5."""
    assert outcome.console.value("RECV-RC") == "0"
    assert outcome.console.value("IN-MD5") == outcome.sent_md5


def test_cold_nic_is_replaced_by_a_hot_plugged_one(outcome: Outcome) -> None:
    """device_del of the JSON file's NIC: carrier down and DEVICE_DELETED; netdev_add +
    device_add into its slot: carrier up, a ping over it; device_del: carrier down and
    DEVICE_DELETED (path = id, as StratoVirt sends it)."""
    assert outcome.qmp["cold_del"].get("return") == {}, outcome.qmp
    assert outcome.qmp["cold_event"]["data"] == {"device": "net1", "path": "net1"}
    assert outcome.qmp["netdev_add"].get("return") == {}, outcome.qmp
    assert outcome.qmp["device_add"].get("return") == {}, outcome.qmp
    carriers = [line for line in outcome.console.lines if line.startswith("HP-CARRIER=")]
    assert carriers == ["HP-CARRIER=1", "HP-CARRIER=0", "HP-CARRIER=1", "HP-CARRIER=0"]
    assert outcome.console.value("HP-PING-RC") == "0"
    assert outcome.qmp["device_del"].get("return") == {}, outcome.qmp
    assert outcome.qmp["event"]["data"] == {"device": "nic-hp", "path": "nic-hp"}


def test_counters_show_the_traffic_and_no_fault(outcome: Outcome) -> None:
    """query-stats: the NIC moved the bulk both ways, and Linux's frames never tripped a
    header check (a false positive there would silently drop real traffic)."""
    (entry,) = outcome.qmp["stats"]["return"]
    stats = {item["name"]: item["value"] for item in entry["stats"]}
    assert stats["rx_bytes"] > BULK and stats["tx_bytes"] > BULK, stats
    for name in ("tx_malformed", "tx_oversized", "guest_faults", "errors"):
        assert stats[name] == 0, stats


def test_vmm_exits_cleanly(outcome: Outcome) -> None:
    """The guest's reboot ends the VMM with status 0; at log level warn nothing about bad
    guest input or bad driver access was logged."""
    print(f"net guest run (boot, checks, reboot): {outcome.wall:.1f} s")
    assert outcome.returncode == 0, outcome.stderr
    assert "bad guest input" not in outcome.stderr, outcome.stderr
    assert "bad driver access" not in outcome.stderr, outcome.stderr
