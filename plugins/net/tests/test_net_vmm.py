"""The net plugin in the real ``stratovmm`` process on /dev/kvm, with tiny guests (no Linux):
bad user input refused by name with a non-zero exit, cold-plugged NICs from the command line
and the JSON file, and QMP netdev_add / device_add / device_del (ifname and getfd fds),
all under the seccomp filter.  Needs root (it makes taps) and gcc -m32."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stratovmm_net.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF

from stratovmm.testing.guest import stratovmm_command
from stratovmm.testing.qmp import QmpTestClient

pytestmark = pytest.mark.kvm

_PVH = """
.section .note.Xen, "a"
.align 4
.long 4, 4, 18
.asciz "Xen"
.long _start
.text
.code32
.globl _start
_start:
  mov $0x3f8, %dx
  mov $msg, %esi
1: lodsb
  test %al, %al
  jz 2f
  out %al, %dx
  jmp 1b
2:
"""
GUESTS = {
    "reset": _PVH + "  mov $0xfe, %al\n  out %al, $0x64\n3: hlt\n  jmp 3b\nmsg: .asciz \"X\\n\"\n",
    "loop": _PVH + "  cli\n3: hlt\n  jmp 3b\nmsg: .asciz \"READY\\n\"\n",
}


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two tiny PVH guests, assembled once."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm not available")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to assemble the tiny guests")
    out = tmp_path_factory.mktemp("net-guests")
    built = {}
    for name, source in GUESTS.items():
        (out / f"{name}.S").write_text(source)
        proc = subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,-Ttext=0x100000",
                               "-Wl,--build-id=none", "-o", str(out / f"{name}.elf"),
                               str(out / f"{name}.S")], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot assemble a 32-bit guest: {proc.stderr.strip()}")
        built[name] = out / f"{name}.elf"
    return built


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def taps() -> Iterator[list[str]]:
    """Two persistent taps (root only), deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making tap devices needs root and iproute2")
    names = [f"svt{os.getpid() % 100000}{x}" for x in "ab"]
    try:
        for name in names:
            _ip("tuntap", "add", "dev", name, "mode", "tap")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a tap here: {exc.stderr.decode().strip()}")
    yield names
    for name in names:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def run_vmm(kernel: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*stratovmm_command(), "-kernel", str(kernel), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def open_tap_fd(name: str, flags: int = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) -> int:
    """A tun fd attached to tap ``name`` (created, non-persistent, if it does not exist)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


# -- bad user input ------------------------------------------------------------------------------


BAD_ARGS = [
    (["-netdev", "id=n0,netdev=svmmnosuch0"], "-netdev id=n0 netdev: tap device 'svmmnosuch0'"
                                              " does not exist"),
    (["-netdev", "id=n0,netdev=lo"], "'lo' exists but is not a tap device"),
    (["-netdev", "id=n0,netdev={a},mac=01:00:5e:00:00:01"], "-netdev id=n0 mac: 01:00:5e:00:00:01"
                                                          " is a multicast address"),
    (["-netdev", "id=n0,netdev={a},mac=52:54:zz:00:00:01"], "is not a MAC address"),
    (["-netdev", "id=n0,netdev={a}", "-netdev", "id=n0,netdev={b}"], "duplicate id 'n0'"),
    (["-netdev", "id=n0,netdev={a},iothread=nope"], "iothread 'nope' is not defined"),
    (["-netdev", "id=n0"], "-netdev: missing netdev="),
    (["-netdev", "id=n0,netdev={a},queues=2"], "-netdev: unknown key 'queues'"),
    (["-netdev", "id=n0,netdev={a},vhost=maybe"], "vhost='maybe': must be one of"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS)
def test_bad_netdev_options_are_refused_by_name(guests: dict[str, Path], taps: list[str],
                                                argv: list[str], message: str) -> None:
    """A missing tap, a non-tap, a bad or multicast MAC, a duplicate id, an unknown iothread
    or key: exit status non-zero and a message naming the option."""
    argv = [a.format(a=taps[0], b=taps[1]) for a in argv]
    proc = run_vmm(guests["reset"], *argv)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_vhost_on_is_refused_without_vhost_net(guests: dict[str, Path],
                                               taps: list[str]) -> None:
    """vhost=on on a host without /dev/vhost-net: a clear error, non-zero exit."""
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    proc = run_vmm(guests["reset"], "-netdev", f"id=n0,netdev={taps[0]},vhost=on")
    assert proc.returncode != 0
    assert "-netdev id=n0 vhost: vhost=on needs /dev/vhost-net" in proc.stderr


def test_bad_mac_in_the_json_file_names_the_key(guests: dict[str, Path], taps: list[str],
                                                tmp_path: Path) -> None:
    """The same MAC check applies to the JSON "net" list; the file and key are named."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"net": [{"iface_id": "n1", "host_dev_name": taps[0],
                                           "mac": "nonsense"}]}))
    proc = run_vmm(guests["reset"], "-config", str(config))
    assert proc.returncode != 0
    assert "net[0].mac" in proc.stderr and "is not a MAC address" in proc.stderr


def test_cold_plugged_nics_from_cmdline_and_json_boot(guests: dict[str, Path], taps: list[str],
                                                      tmp_path: Path) -> None:
    """One NIC from -netdev (iothread, MAC, vhost=off) and one from the JSON file: the VM
    builds, runs under seccomp and exits 0; the taps are released afterwards."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"net": [{"iface_id": "n1", "host_dev_name": taps[1],
                                           "mac": "52:54:00:00:00:02", "vhost_type": None}]}))
    proc = run_vmm(guests["reset"], "-config", str(config), "-iothread", "id=io0", "-netdev",
                   f"id=n0,netdev={taps[0]},mac=52:54:00:00:00:01,iothread=io0,vhost=off",
                   "-serial", "stdio")
    assert proc.returncode == 0, proc.stderr
    assert "X" in proc.stdout
    for name in taps:
        os.close(open_tap_fd(name))      # EBUSY here would mean the VMM kept it


# -- QMP ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def loop_vm(kernel: Path, workdir: Path,
            *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = str(workdir / "qmp.sock")
    out = open(workdir / "vmm.out", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*stratovmm_command(), "-kernel", str(kernel), "-serial", "stdio",
                             "-api-channel", f"unix:{sock}", *extra],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"READY" not in (workdir / "vmm.out").read_bytes():
            assert proc.poll() is None, (workdir / "vmm.out").read_text()
            assert time.monotonic() < deadline, "the tiny guest did not start"
            time.sleep(0.05)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        out.close()


def error_of(reply: dict[str, object]) -> str:
    error = reply.get("error")
    assert isinstance(error, dict), reply
    return f"{error['class']}: {error['desc']}"


def test_qmp_netdev_add_and_hot_replace(guests: dict[str, Path], taps: list[str],
                                        tmp_path: Path) -> None:
    """netdev_add by ifname and by a getfd fd, device_add into both reserved slots,
    device_del with DEVICE_DELETED (the tap is released), and every bad request refused
    with a clear error while the VM keeps running under seccomp."""
    fdtap = f"svf{os.getpid() % 100000}"
    tap_fd = open_tap_fd(fdtap)            # non-persistent: lives while some fd holds it
    with loop_vm(guests["loop"], tmp_path) as (proc, sock), QmpTestClient(sock) as qmp:
        assert qmp.command("netdev_add", {"id": "hp0", "ifname": taps[0]})["return"] == {}
        assert "already exists" in error_of(qmp.command("netdev_add",
                                                        {"id": "hp0", "ifname": taps[1]}))
        assert "does not exist" in error_of(qmp.command("netdev_add",
                                                        {"id": "x", "ifname": "svmmnosuch0"}))
        assert "exactly one of ifname" in error_of(qmp.command("netdev_add", {"id": "x"}))
        assert "no fd named 'nope'" in error_of(qmp.command("netdev_add",
                                                            {"id": "x", "fds": "nope"}))
        read_end, write_end = os.pipe()
        assert qmp.command("getfd", {"fdname": "pipe"}, fds=[read_end])["return"] == {}
        assert "not an attached tun/tap fd" in error_of(
            qmp.command("netdev_add", {"id": "x", "fds": "pipe"}))
        os.close(read_end)
        os.close(write_end)
        assert qmp.command("getfd", {"fdname": "tapfd"}, fds=[tap_fd])["return"] == {}
        assert qmp.command("netdev_add", {"id": "fd0", "fds": "tapfd"})["return"] == {}

        assert "is not a MAC address" in error_of(qmp.command(
            "device_add", {"driver": "virtio-net-mmio", "id": "nic0", "netdev": "hp0",
                           "addr": "0x0", "mac": "zz"}))
        assert "no netdev 'ghost'" in error_of(qmp.command(
            "device_add", {"driver": "virtio-net-mmio", "id": "nic0", "netdev": "ghost",
                           "addr": "0x0"}))
        assert qmp.command("device_add", {"driver": "virtio-net-mmio", "id": "nic0",
                                          "netdev": "hp0", "addr": "0x0",
                                          "mac": "52:54:00:00:00:10"})["return"] == {}
        assert "already exists" in error_of(qmp.command("netdev_add",
                                                        {"id": "hp0", "ifname": taps[1]}))
        assert qmp.command("device_add", {"driver": "virtio-net-mmio", "id": "nic1",
                                          "netdev": "fd0", "addr": "0x1"})["return"] == {}
        assert "is not a slot of this VM" in error_of(qmp.command(
            "device_add", {"driver": "virtio-net-mmio", "id": "nic2", "netdev": "fd0",
                           "addr": "0x2"}))
        with pytest.raises(OSError):           # the VMM holds taps[0] now
            open_tap_fd(taps[0])

        assert qmp.command("device_del", {"id": "nic0"})["return"] == {}
        event = qmp.wait_event("DEVICE_DELETED", 5)
        assert event["data"] == {"device": "nic0", "path": "nic0"}
        os.close(open_tap_fd(taps[0]))         # released: attachable again
        assert qmp.command("netdev_add", {"id": "hp0", "ifname": taps[0]})["return"] == {}
        assert qmp.command("device_add", {"driver": "virtio-net-mmio", "id": "nic0",
                                          "netdev": "hp0", "addr": 0})["return"] == {}
        assert qmp.command("device_del", {"id": "nic1"})["return"] == {}
        assert qmp.wait_event("DEVICE_DELETED", 5)["data"]["device"] == "nic1"
        assert qmp.command("quit")["return"] == {}
        assert proc.wait(10) == 0
    os.close(tap_fd)


@pytest.mark.parametrize("seccomp", [True, False])
def test_netdev_add_by_name_uses_fds_opened_before_seccomp(guests: dict[str, Path],
                                                           taps: list[str], tmp_path: Path,
                                                           seccomp: bool) -> None:
    """Under seccomp each netdev_add ifname=... uses one of 8 /dev/net/tun fds opened before
    the filter, then says to pass fds instead (and the fds path still works); with
    -disable-seccomp the tap is opened on demand, without a limit."""
    extra = () if seccomp else ("-disable-seccomp",)
    tap_fd = open_tap_fd(taps[1])
    with loop_vm(guests["loop"], tmp_path, *extra) as (proc, sock), QmpTestClient(sock) as qmp:
        for n in range(8):
            assert "does not exist" in error_of(qmp.command(
                "netdev_add", {"id": f"m{n}", "ifname": f"svmmnosuch{n}"}))
        ninth = qmp.command("netdev_add", {"id": "m8", "ifname": taps[0]})
        if seccomp:
            assert "are used up; pass an open tap fd with getfd" in error_of(ninth)
        else:
            assert ninth["return"] == {}
        assert qmp.command("getfd", {"fdname": "t"}, fds=[tap_fd])["return"] == {}
        assert qmp.command("netdev_add", {"id": "f", "fds": "t"})["return"] == {}
        assert qmp.command("quit")["return"] == {}
        assert proc.wait(10) == 0
    os.close(tap_fd)


def test_cold_nic_fills_slot_0_and_netdevs_follow_v03(guests: dict[str, Path],
                                                      taps: list[str], tmp_path: Path) -> None:
    """As StratoVirt v0.3: the cold NIC is net slot 0 (device_add there is refused) and
    device_del removes it (DEVICE_DELETED path = id, tap released, netdev_del of it then
    succeeds once); netdev_add takes v0.3's arguments (type, queues, scripts, the last of
    several fds names) and refuses vhost; netdev_del closes an unattached netdev and
    refuses an attached one."""
    with loop_vm(guests["loop"], tmp_path, "-netdev", f"id=cold,netdev={taps[0]}") as (
            proc, sock), QmpTestClient(sock) as qmp:
        assert "occupied by 'cold'" in error_of(qmp.command(
            "device_add", {"driver": "virtio-net-mmio", "id": "x", "addr": "0x0"}))
        assert "netdev 'cold' is in use by a device" in error_of(
            qmp.command("netdev_del", {"id": "cold"}))
        assert qmp.command("device_del", {"id": "cold"})["return"] == {}
        assert qmp.wait_event("DEVICE_DELETED", 5)["data"] == {"device": "cold",
                                                               "path": "cold"}
        os.close(open_tap_fd(taps[0]))         # released
        assert qmp.command("netdev_del", {"id": "cold"})["return"] == {}
        assert "no netdev 'cold'" in error_of(qmp.command("netdev_del", {"id": "cold"}))

        assert qmp.command("netdev_add", {
            "id": "n1", "ifname": taps[1], "type": "tap", "queues": "1", "script": "no",
            "downscript": "no", "dnssearch": "example"})["return"] == {}
        assert qmp.command("netdev_del", {"id": "n1"})["return"] == {}
        os.close(open_tap_fd(taps[1]))         # closed by netdev_del
        refusal = ("needs /dev/vhost-net" if not os.path.exists("/dev/vhost-net")
                   else "vhost-net serves only -netdev NICs")
        for vhost in ({"vhost": "on"}, {"vhost": True}, {"vhostfds": "v"}):
            assert refusal in error_of(qmp.command(
                "netdev_add", {"id": "v", "ifname": taps[1], **vhost}))

        tap_fd = open_tap_fd(taps[1])
        read_end, write_end = os.pipe()
        assert qmp.command("getfd", {"fdname": "a"}, fds=[read_end])["return"] == {}
        assert qmp.command("getfd", {"fdname": "b"}, fds=[tap_fd])["return"] == {}
        assert qmp.command("netdev_add", {"id": "n2", "fds": "a:b"})["return"] == {}
        assert qmp.command("closefd", {"fdname": "a"})["return"] == {}    # not taken
        assert "not found" in error_of(qmp.command("closefd", {"fdname": "b"}))
        assert qmp.command("device_add", {"driver": "virtio-net-mmio", "id": "nic",
                                          "netdev": "n2", "addr": "0"})["return"] == {}
        assert "in use by a device" in error_of(qmp.command("netdev_del", {"id": "n2"}))
        assert qmp.command("quit")["return"] == {}
        assert proc.wait(10) == 0
    for fd in (read_end, write_end, tap_fd):
        os.close(fd)


def test_cold_nic_on_an_inherited_tap_fd(guests: dict[str, Path], taps: list[str],
                                         tmp_path: Path) -> None:
    """-netdev ...,fds=N (StratoVirt v0.3) and JSON "tap_fd": the NIC uses the tap fd the
    parent passed down instead of opening netdev= by name; a fd that is no tap is refused
    naming the option."""
    tap_fd = open_tap_fd(taps[0])
    config = tmp_path / "vm.json"
    try:
        argv = [*stratovmm_command(), "-kernel", str(guests["reset"]), "-serial", "stdio",
                "-netdev", f"id=n0,netdev={taps[0]},fds={tap_fd}"]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60, pass_fds=(tap_fd,))
        assert proc.returncode == 0, proc.stderr
        config.write_text(json.dumps({"net": [{"iface_id": "n1", "host_dev_name": taps[0],
                                               "tap_fd": tap_fd}]}))
        proc = subprocess.run([*argv[:5], "-config", str(config)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, pass_fds=(tap_fd,))
        assert proc.returncode == 0, proc.stderr
    finally:
        os.close(tap_fd)
    proc = run_vmm(guests["reset"], "-netdev", f"id=n0,netdev={taps[0]},fds=0")
    assert proc.returncode == 2 and "-netdev fds: 0 is below the minimum 3" in proc.stderr
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run([*argv[:5], "-netdev", f"id=n0,netdev={taps[0]},fds={read_end}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60, pass_fds=(read_end,))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert proc.returncode == 2
    assert "-netdev id=n0 fds: fd is not an attached tun/tap fd" in proc.stderr, proc.stderr
