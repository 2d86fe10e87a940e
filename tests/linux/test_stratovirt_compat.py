"""StratoVirt v0.3's hot-replace and lifecycle, seen by the Linux guest, in one boot.

The VM starts frozen (-S) with a cold root drive (vda, blk slot 0), a cold data
drive (vdb, slot 1), a cold NIC (net slot 0, on a tap in a network namespace made
for the test) and -api-channel; the host checks the frozen VM and continues it.
Then, each step waiting for the guest to say it saw the last one: the guest reads
the cold data drive; device_del removes it (DEVICE_DELETED, vdb gone) and its node
name is free; a drive hot-added at addr 0x1 is vdb again and the guest reads its
md5; device_del removes it; blockdev-del frees the node name, which names a loop
block device next (host_device, addr 0x2 = vdc, read by the guest); a NIC on a
second tap goes through netdev_add / device_add / device_del / netdev_del twice
and the guest sees its carrier come and go each time.  query-cpus' thread ids are
the VMM's vCPU threads.  Needs root (namespace, taps, losetup), ip and losetup.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from qmp_vm import VmProcess
from stratovmm_net.device import format_mac, generated_mac

from stratovmm.testing.guest import GUEST_TIMEOUT, boot_args, boot_lock
from stratovmm.testing.qmp import QmpTestClient

VM_NAME = "svcompat"
COLD_MAC = "52:54:00:5c:0d:01"
HP_MAC = format_mac(generated_mac(f"slot1/{VM_NAME}"))     # the placeholder in net slot 1
STEP = 120.0                                               # seconds for one guest step

GUEST = f"""
size() {{ cat /sys/block/$1/size 2>/dev/null || echo none; }}
waitsize() {{
  n=0
  while [ $n -lt 1200 ]; do
    s=$(size $1)
    if [ "$2" = 0 ]; then [ "$s" = 0 ] && break; else [ "$s" != 0 ] && [ "$s" != none ] && break; fi
    sleep 0.1; n=$((n+1))
  done
  echo "SIZE $1=$(size $1)"
}}
md5() {{ dd if=/dev/$1 bs=64k iflag=direct 2>/dev/null | md5sum; }}
ifmac() {{
  for i in /sys/class/net/*; do read -r a < $i/address; [ "$a" = "$1" ] && echo ${{i##*/}}; done
}}
carrier() {{
  n=0; c=x
  while [ $n -lt 1200 ]; do
    read -r c < /sys/class/net/$1/carrier; [ "$c" = "$2" ] && break; sleep 0.1; n=$((n+1))
  done
  echo "CARRIER $1=$c"
}}
echo "DISKS vda=$(size vda) vdb=$(size vdb) vdc=$(size vdc) vdd=$(size vdd) vde=$(size vde)"
echo "COLD-MD5 $(md5 vdb)"
echo STEP-DEL-COLD
waitsize vdb 0
echo STEP-HOT
waitsize vdb nz
echo "HOT-MD5 $(md5 vdb)"
echo STEP-DEL-HOT
waitsize vdb 0
echo STEP-LOOP
waitsize vdc nz
echo "LOOP-MD5 $(md5 vdc)"
COLD=$(ifmac {COLD_MAC}); HP=$(ifmac {HP_MAC})
echo "IFACES cold=$COLD hp=$HP"
ip link set $COLD up; ip link set $HP up
carrier $COLD 1
for round in 1 2; do
  echo NIC-PLUG-$round
  carrier $HP 1
  echo NIC-UNPLUG-$round
  carrier $HP 0
done
echo STEP-DONE
"""


def ip_run(*argv: str, check: bool = True) -> None:
    """``ip ARGV``, which must end (and, with ``check``, succeed) within a minute."""
    subprocess.run(["ip", *argv], check=check, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A namespace with two taps that are up (no addresses: the guest checks carrier)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces, taps and loop devices need root")
    for tool in ("ip", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    name = f"svmmcompat{os.getpid()}"
    ip_run("netns", "add", name)
    try:
        for tap in ("tap0", "tap1"):
            ip_run("-n", name, "tuntap", "add", "dev", tap, "mode", "tap")
            ip_run("-n", name, "link", "set", tap, "up")
        yield name
    finally:
        ip_run("netns", "del", name, check=False)


@pytest.fixture(scope="module")
def loop_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A loop block device over 1 MiB of random bytes: (device path, md5)."""
    data = random.Random(3).randbytes(1 << 20)
    backing = tmp_path_factory.mktemp("loop") / "loop.img"
    backing.write_bytes(data)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"losetup: {made.stderr.strip()}")
    device = made.stdout.strip()
    yield device, hashlib.md5(data).hexdigest()
    subprocess.run(["losetup", "-d", device], timeout=30, check=False)


@dataclass
class Outcome:
    vm: VmProcess
    returncode: int = -1
    replies: dict[str, Any] = field(default_factory=dict)
    md5: dict[str, str] = field(default_factory=dict)
    frozen_stdout: str = ""
    tasks: dict[int, str] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        """The guest console (where tests/hostfault.py looks for a guest fault)."""
        return self.vm.stdout.replace("\r", "")


def write_image(path: Path, seed: int) -> str:
    data = random.Random(seed).randbytes(1 << 20)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def wait(vm: VmProcess, marker: str) -> None:
    assert vm.wait_stdout(marker, STEP), f"no {marker}:\n{vm.stdout[-3000:]}\n{vm.stderr[-2000:]}"


def blk_cycle(qmp: QmpTestClient, out: Outcome, work: Path, loop: str) -> None:
    """The drive steps, each after the guest's marker."""
    vm, r = out.vm, out.replies
    wait(vm, "STEP-DEL-COLD")
    r["occupied"] = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "x",
                                               "addr": "0x1"})
    r["del_cold"] = qmp.command("device_del", {"id": "data"})
    r["del_cold_event"] = qmp.wait_event("DEVICE_DELETED", 10)
    r["blockdev_del_cold"] = qmp.command("blockdev-del", {"node-name": "data"})
    wait(vm, "STEP-HOT")
    r["add_hot"] = qmp.command("blockdev-add", {"node-name": "hot", "file": {
        "driver": "file", "filename": str(work / "hot.img")}})
    r["plug_hot"] = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "hot",
                                               "addr": "0x1"})
    wait(vm, "STEP-DEL-HOT")
    r["del_hot"] = qmp.command("device_del", {"id": "hot"})
    r["del_hot_event"] = qmp.wait_event("DEVICE_DELETED", 10)
    wait(vm, "STEP-LOOP")
    r["blockdev_del_hot"] = qmp.command("blockdev-del", {"node-name": "hot"})
    r["add_loop"] = qmp.command("blockdev-add", {"node-name": "hot", "read-only": True,
                                                 "file": {"driver": "host_device",
                                                          "filename": loop}})
    r["plug_loop"] = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "loop",
                                                "drive": "hot", "addr": "0x2"})


def nic_cycles(qmp: QmpTestClient, out: Outcome) -> None:
    """netdev_add / device_add / device_del / netdev_del, twice, with the same names."""
    for round_ in (1, 2):
        wait(out.vm, f"NIC-PLUG-{round_}")
        replies = [
            qmp.command("netdev_add", {"id": "hp0", "ifname": "tap1", "type": "tap"}),
            qmp.command("device_add", {"driver": "virtio-net-mmio", "id": "nic-hp",
                                       "netdev": "hp0", "addr": "0x1"})]
        wait(out.vm, f"NIC-UNPLUG-{round_}")
        replies.append(qmp.command("device_del", {"id": "nic-hp"}))
        replies.append(qmp.wait_event("DEVICE_DELETED", 10))
        replies.append(qmp.command("netdev_del", {"id": "hp0"}))
        out.replies[f"nic{round_}"] = replies


def frozen_checks(qmp: QmpTestClient, out: Outcome) -> None:
    """-S: paused, nothing printed; cont runs the guest (RESUME); vCPU thread ids."""
    out.replies["frozen_status"] = qmp.command("query-status")
    out.frozen_stdout = out.vm.stdout
    out.replies["cpus"] = qmp.command("query-cpus")
    task_dir = Path(f"/proc/{out.vm.proc.pid}/task")
    out.tasks = {int(t.name): (t / "comm").read_text().strip() for t in task_dir.iterdir()}
    out.replies["cont"] = qmp.command("cont")
    out.replies["resume"] = qmp.wait_event("RESUME", 10)


@pytest.fixture(scope="module")
def outcome(netns: str, loop_device: tuple[str, str], guest: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Boot once, frozen, and drive every step from the host; keep what happened."""
    work = tmp_path_factory.mktemp("compat")
    root = work / "root.ext4"
    shutil.copyfile(guest / "rootfs.ext4", root)
    md5 = {"cold": write_image(work / "data.img", 1), "hot": write_image(work / "hot.img", 2),
           "loop": loop_device[1]}
    args = [*boot_args(guest, GUEST, smp=2, mem="256M"), "-S", "-name", VM_NAME,
            "-drive", f"id=root,file={root}", "-drive", f"id=data,file={work / 'data.img'}",
            "-netdev", f"id=cold,netdev=tap0,mac={COLD_MAC}"]
    with boot_lock():
        vm = VmProcess(args, prefix=["ip", "netns", "exec", netns])
        out = Outcome(vm, md5=md5)
        try:
            with QmpTestClient(vm.socket_path, timeout=60) as qmp:
                frozen_checks(qmp, out)
                blk_cycle(qmp, out, work, loop_device[0])
                nic_cycles(qmp, out)
                wait(vm, "STEP-DONE")
            out.returncode = vm.wait(GUEST_TIMEOUT)
        finally:
            vm.close()
    yield out


def after(out: Outcome, marker: str, text: str) -> bool:
    """``text`` is the next thing the guest script printed after ``marker``."""
    rest = out.stdout.split(marker + "\n", 1)
    return len(rest) == 2 and text in rest[1].split("STEP-", 1)[0]


def line_value(out: Outcome, key: str) -> str:
    match = re.search(rf"^{key}[ =](\S+)", out.stdout, re.M)
    assert match, f"no {key} in the guest output:\n{out.stdout[-3000:]}"
    return match.group(1)


def test_frozen_vm_runs_nothing_until_cont(outcome: Outcome) -> None:
    """-S: query-status paused (not running) and no guest output until cont, which
    answers {} and sends RESUME with data {}; the guest then boots."""
    assert outcome.replies["frozen_status"]["return"] == {
        "running": False, "singlestep": False, "status": "paused"}
    assert outcome.frozen_stdout == ""
    assert outcome.replies["cont"]["return"] == {}
    assert outcome.replies["resume"]["data"] == {}
    assert "GUEST-READY" in outcome.stdout


def test_query_cpus_thread_ids_are_the_vcpu_threads(outcome: Outcome) -> None:
    """query-cpus lists both vCPUs; each thread_id is a thread of the VMM named vcpuN."""
    cpus = outcome.replies["cpus"]["return"]
    assert [c["CPU"] for c in cpus] == [0, 1]
    for cpu in cpus:
        assert outcome.tasks.get(cpu["thread_id"]) == f"vcpu{cpu['CPU']}", outcome.tasks
        assert cpu["qom_path"] == f"/machine/unattached/device[{cpu['CPU']}]"
        assert cpu["arch"] == "x86" and cpu["current"] and not cpu["halted"]


def test_cold_drives_are_slots_0_and_1(outcome: Outcome) -> None:
    """Before any hot-plug: vda is the root drive (32 MiB), vdb the cold data drive,
    which the guest reads byte for byte, vdc and vdd the empty blk slots, and no vde;
    device_add at addr 0x1 is refused while the data drive is there."""
    line = re.search(r"^DISKS (.*)$", outcome.stdout, re.M)
    assert line, outcome.stdout[-2000:]
    disks = dict(kv.split("=") for kv in line.group(1).split())
    assert disks == {"vda": str(32 << 11), "vdb": str(1 << 11), "vdc": "0", "vdd": "0",
                     "vde": "none"}
    assert line_value(outcome, "COLD-MD5") == outcome.md5["cold"]
    assert "occupied by 'data'" in outcome.replies["occupied"]["error"]["desc"]


def test_cold_drive_is_removed(outcome: Outcome) -> None:
    """device_del of the cold data drive: DEVICE_DELETED with path = id, the guest's vdb
    drops to size 0, and a blockdev-del of its node succeeds."""
    r = outcome.replies
    assert r["del_cold"]["return"] == {}
    assert r["del_cold_event"]["data"] == {"device": "data", "path": "data"}
    assert r["blockdev_del_cold"]["return"] == {}
    assert after(outcome, "STEP-DEL-COLD", "SIZE vdb=0\n")


def test_hot_drive_at_addr_1_is_vdb(outcome: Outcome) -> None:
    """blockdev-add + device_add addr 0x1 fill slot 1: the guest reads the image's md5
    from /dev/vdb; device_del removes it (DEVICE_DELETED, size 0 again)."""
    r = outcome.replies
    assert r["add_hot"]["return"] == {} and r["plug_hot"]["return"] == {}
    assert line_value(outcome, "HOT-MD5") == outcome.md5["hot"]
    assert r["del_hot"]["return"] == {}
    assert r["del_hot_event"]["data"] == {"device": "hot", "path": "hot"}
    assert after(outcome, "STEP-DEL-HOT", "SIZE vdb=0\n")


def test_node_name_reused_for_a_block_device(outcome: Outcome) -> None:
    """After blockdev-del the name "hot" names a loop block device (host_device) plugged
    at addr 0x2: the guest reads its md5 from /dev/vdc."""
    r = outcome.replies
    assert r["blockdev_del_hot"]["return"] == {}
    assert r["add_loop"]["return"] == {} and r["plug_loop"]["return"] == {}
    assert line_value(outcome, "LOOP-MD5") == outcome.md5["loop"]


def test_nic_is_hot_replaced_twice(outcome: Outcome) -> None:
    """The cold NIC has its carrier; in net slot 1 a NIC comes up and goes down twice:
    netdev_add, device_add, device_del (DEVICE_DELETED), netdev_del all succeed."""
    ifaces = re.search(r"^IFACES cold=(\S+) hp=(\S+)$", outcome.stdout, re.M)
    assert ifaces and ifaces.group(1) != ifaces.group(2), outcome.stdout[-2000:]
    cold, hot = ifaces.groups()
    carriers = re.findall(rf"^CARRIER (?:{cold}|{hot})=(\S+)$", outcome.stdout, re.M)
    assert carriers == ["1", "1", "0", "1", "0"], outcome.stdout[-2000:]
    for round_ in (1, 2):
        netdev_add, device_add, device_del, event, netdev_del = outcome.replies[f"nic{round_}"]
        assert netdev_add["return"] == {} and device_add["return"] == {}
        assert device_del["return"] == {} and netdev_del["return"] == {}
        assert event["data"] == {"device": "nic-hp", "path": "nic-hp"}


def test_vmm_exits_cleanly(outcome: Outcome) -> None:
    """The guest's reboot ends the VMM with status 0."""
    assert "STEP-DONE" in outcome.stdout
    assert outcome.returncode == 0, outcome.vm.stderr[-3000:]
