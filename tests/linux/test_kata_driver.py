"""Kata Containers' StratoVirt driver as a client: what ``stratovirt.go`` launches and how its
QMP client (govmm's ``qmp.go``) talks to it, replayed against ``stratovmm``.

The command line is built as ``createParams`` and the devices' ``getParams`` build it
(``kata-containers/kata-containers``, ``src/runtime/virtcontainers/stratovirt.go``), for a
sandbox with an image rootfs, the debug console, the rng and one tap endpoint: ``-m`` in
MiB, ``-qmp unix:...,server,nowait``, ``-D`` with no path, 2.x's ``-drive``/``-netdev
tap``/``-chardev``/``-object`` back ends with their ``-device`` front ends, the kernel
parameters in ``getKernelParams``' order (``root=/dev/vda1``: the image is partitioned,
as Kata's is), and the tap's queue fds passed as Go's ``ExtraFiles`` passes them (entry
``i`` is fd ``3+i`` in the child; the parent closes its copies after the start, as
``StartVM`` does).  The environment is only ``STRATOVIRT_LOG_LEVEL=info`` (Kata's debug
``cmd.Env``).  Then govmm's sequence: ``waitVM`` (connect until the socket answers, parse
the greeting as ``parseVersion`` does, refuse qemu < 5, ``qmp_capabilities``, close);
``hotplugBlk`` (a new connection, ``qmp_capabilities``, ``blockdev-add`` with ``driver:
raw``, ``file.driver: file`` and ``aio: native``, ``device_add`` of ``virtio-blk-mmio``
with ``addr`` "1" for ``vdb`` and ``romfile``); ``GetThreadIDs`` (``query-cpus``);
``device_del`` waiting for ``DEVICE_DELETED`` as govmm's event filter does; ``StopVM``'s
SIGKILL.  One boot checks all of it, and the guest says what it saw on its console
(``console=hvc0``: the virtconsole's socket): its root on ``/dev/vda1`` read-only, one
vCPU, the virtio rng, the NIC's MAC, the hot-added disk's size and bytes, and the disk
gone again.  After the SIGKILL nothing is left: no process, the tap (whose only fds the
VMM held) gone, and in the sandbox directory only the two sockets the command line
named.  Kata's ``vhost-user-fs-device`` and ``vhost-vsock-device`` (this host has no
``/dev/vhost-vsock`` and no virtio-fs backend) are each refused with a clear message.
Needs root (the tap).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stratovmm.testing.guest import GUEST_TIMEOUT, HOST_APPEND, cmd_arg, stratovmm_command

# stratovirt.go's constants and fixed device names.
DEFAULT_KERNEL_PARAMS = "reboot=k panic=1 net.ifnames=0 ramdom.trust_cpu=on"
MICROVM_PARAMS = "pci=off iommu=off acpi=off"
DEBUG_PARAMS = "debug console=hvc0"
ROOT_PARAMS = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
MAC = "02:42:ac:11:00:02"
DRIVE_ID = "drive-3f2a6c0d9e8b7a41c5d2e1f0"       # utils.MakeNameID("drive", ..., 31)
HOT_DATA = b"KATA-HOTPLUGGED-DISK-CONTENT"
STEP = 90.0

# What the guest runs (guest.cmd64), printing each finding on its console (hvc0).
GUEST = f"""
echo "KATA-CPUS $(grep -c ^processor /proc/cpuinfo)"
echo "KATA-ROOT $(grep ' / ' /proc/mounts) vda1=$(cat /sys/block/vda/vda1/size)"
echo "KATA-CONSOLE $(cat /sys/class/tty/console/active)"
echo "KATA-RNG $(cat /sys/class/misc/hw_random/rng_current)"
echo "KATA-NET $(cat /sys/class/net/eth0/address)"
echo "KATA-WAIT-HOTPLUG vdb=$(cat /sys/block/vdb/size)"
n=0; while [ "$(cat /sys/block/vdb/size)" = 0 ] && [ $n -lt 1500 ]; do sleep 0.1; n=$((n+1)); done
echo "KATA-HOT size=$(cat /sys/block/vdb/size) data=$(head -c {len(HOT_DATA)} /dev/vdb)"
n=0; while [ "$(cat /sys/block/vdb/size)" != 0 ] && [ $n -lt 1500 ]; do sleep 0.1; n=$((n+1)); done
echo "KATA-UNPLUGGED size=$(cat /sys/block/vdb/size)"
"""

# -- the tap endpoint: a multi-queue tap whose queue fds are the VMFds -------------------------

TUNSETIFF, TUNGETIFF = 0x400454CA, 0x800454D2
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, IFF_VNET_HDR = 0x0002, 0x1000, 0x0100, 0x4000


def open_tap_queues(name: str, queues: int) -> list[int]:
    """The queue fds of a new (non-persistent) multi-queue tap, as Kata's network endpoint
    holds them (``NetworkPair().VMFds``)."""
    fds = []
    for _ in range(queues):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        ifr = struct.pack("16sH22x", name.encode(),
                          IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fds.append(fd)
    return fds


def partitioned_rootfs(image: Path, out: Path) -> Path:
    """``image`` with a journal (Kata's ``rootflags=data=ordered`` needs one: ext4 refuses
    a ``data=`` mode without a journal) as partition 1 of an MBR disk (at sector 2048), as
    Kata's rootfs image is laid out for ``root=/dev/vda1``."""
    journaled = out.with_suffix(".ext4")
    shutil.copyfile(image, journaled)
    subprocess.run(["tune2fs", "-O", "has_journal", str(journaled)], check=True,
                   capture_output=True)
    data = journaled.read_bytes()
    journaled.unlink()
    start, sectors = 2048, len(data) // 512
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start, sectors)
    mbr[510:512] = b"\x55\xaa"
    with open(out, "wb") as f:
        f.write(mbr)
        f.seek(start * 512)
        f.write(data)
    return out


# -- the command line, as createParams + getParams build it ------------------------------------


@dataclass
class Sandbox:
    """The paths of one Kata sandbox (``VMStorePath/<id>``) and its launch arguments."""

    vm_path: Path
    kernel: Path
    rootfs: Path
    tap_fds: list[int]
    kernel_params: str
    extra: list[str] = field(default_factory=list)

    @property
    def qmp(self) -> Path:
        return self.vm_path / "qmp.socket"

    @property
    def console(self) -> Path:
        return self.vm_path / "console.socket"

    def params(self) -> list[str]:
        """``createParams``: the fixed options, then each device's ``getParams`` in
        ``createDevices`` order (rng, debug console, rootfs block), then the network
        endpoint ``AddDevice`` appended; fds numbered by ``appendFDs`` (3, 4, ...)."""
        append = " ".join((self.kernel_params, ROOT_PARAMS, DEFAULT_KERNEL_PARAMS,
                           MICROVM_PARAMS, DEBUG_PARAMS))
        fds = ":".join(str(3 + i) for i in range(len(self.tap_fds)))
        return [
            "-name", "sandbox-" + self.vm_path.name, "-uuid", str(uuid.uuid4()), "-smp", "1",
            "-m", "512", "-kernel", str(self.kernel), "-append", append,
            "-qmp", f"unix:{self.qmp},server,nowait", "-D", "-disable-seccomp",
            "-machine", "type=microvm,dump-guest-core=off",
            "-object", "rng-random,id=objrng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=objrng0,id=virtio-rng0",
            "-device", "virtio-serial-device,id=virtio-serial0",
            "-chardev", f"socket,id=charconsole0,path={self.console},server,nowait",
            "-device", "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
            "-drive", f"id=rootfs,file={self.rootfs},readonly=on,direct=off",
            "-device", "virtio-blk-device,drive=rootfs,id=virtio-blk0",
            "-netdev", f"tap,id=eth0,fds={fds}",
            "-device", f"virtio-net-device,netdev=eth0,id=eth0,mac={MAC}",
            *self.extra,
        ]

    def launch(self, stderr: Any) -> subprocess.Popen[bytes]:
        """``launchStratovirt``: stdin /dev/null, stdout a pipe, the env Kata's debug mode
        sets, ``ExtraFiles`` as fds 3, 4, ... (moved out of the way first, as Go's
        ``forkExec`` does, so no source is overwritten)."""
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in self.tap_fds]
        targets = tuple(3 + i for i in range(len(high)))

        def extra_files() -> None:
            for target, fd in zip(targets, high, strict=True):
                os.dup2(fd, target)

        try:
            return subprocess.Popen(
                [*stratovmm_command(), *self.params()], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, pass_fds=targets,
                preexec_fn=extra_files, env={"STRATOVIRT_LOG_LEVEL": "info"})
        finally:
            for fd in high:
                os.close(fd)


# -- govmm's QMP client, as qmp.go reads and writes --------------------------------------------


def dial(path: Path, timeout: float, what: str) -> socket.socket:
    """Connect to the unix socket at ``path``, retrying every 50 ms (as govmm's ``waitVM``
    does) until the VMM has bound it."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            assert time.monotonic() < deadline, f"no {what} socket at {path}"
            time.sleep(0.05)


class GovmmQmp:
    """One govmm QMP connection: newline-framed JSON (``bufio.Scanner``), commands without
    ids, one at a time, events matched by a filter (``qmpEventFilter``)."""

    def __init__(self, path: Path, timeout: float) -> None:
        """``QMPStart`` as ``waitVM`` calls it: dial every 50 ms until the socket answers,
        then the greeting, parsed as ``parseVersion`` parses it."""
        self.sock = dial(path, timeout, "QMP")
        self.sock.settimeout(STEP)
        self._lines = self._scan()
        self.events: list[dict[str, Any]] = []
        self.version = self.parse_version(next(self._lines))

    def _scan(self) -> Iterator[bytes]:
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = self.sock.recv(65536)
                assert chunk, "QMP connection closed"
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            yield line

    @staticmethod
    def parse_version(line: bytes) -> tuple[int, int, int, list[str]]:
        """``parseVersion``: QMP.version.qemu.{major,minor,micro} as JSON numbers and
        QMP.capabilities' strings; ``QMPStartWithConn`` refuses a major below 5."""
        greeting = json.loads(line)
        qemu = greeting["QMP"]["version"]["qemu"]
        major, minor, micro = (qemu[k] for k in ("major", "minor", "micro"))
        assert all(isinstance(v, int) for v in (major, minor, micro)), greeting
        caps = [c for c in greeting["QMP"]["capabilities"] if isinstance(c, str)]
        assert major >= 5, f"govmm requires qemu version 5.0 or later, this is {greeting}"
        return major, minor, micro, caps

    def execute(self, name: str, args: dict[str, Any] | None = None,
                event: tuple[str, str, str] | None = None) -> Any:
        """``executeCommand``: send ``{"execute", "arguments"}``, take the next return or
        error; with ``event`` (name, data key, value) also wait for that event, before or
        after the return, as ``processQMPEvent`` does."""
        command: dict[str, Any] = {"execute": name}
        if args is not None:
            command["arguments"] = args
        self.sock.sendall(json.dumps(command).encode() + b"\n")
        result: Any = None
        done, seen = False, event is None
        while not (done and seen):
            message = json.loads(next(self._lines))
            if "event" in message:
                self.events.append(message)
                if event and message["event"] == event[0] and \
                        (message.get("data") or {}).get(event[1]) == event[2]:
                    seen = True
                continue
            assert "error" not in message, f"QMP command failed: {name}: {message}"
            if "return" in message:
                result, done = message["return"], True
        return result

    def close(self) -> None:
        self.sock.close()


class ConsoleReader:
    """What the guest writes on hvc0, read from the virtconsole's socket."""

    def __init__(self, path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.sock = dial(path, timeout, "console")
        self.data = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.data += chunk

    @property
    def text(self) -> str:
        with self._lock:
            return self.data.decode(errors="replace").replace("\r", "")

    def wait(self, pattern: str, timeout: float = STEP) -> re.Match[str]:
        """The first match of ``pattern`` in the console output, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            gone = self.proc.poll()
            assert gone is None and time.monotonic() < deadline, (
                f"no {pattern!r} on hvc0 (VMM status {gone}):\n{self.text[-3000:]}")
            time.sleep(0.1)


def bound_unix_paths(pid: int) -> set[str]:
    """The paths of the unix sockets process ``pid`` holds (its fds matched with
    /proc/net/unix; an fd closed while /proc is read is no finding)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    paths = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes:
                paths.add(parts[7])
    return paths


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


@pytest.fixture
def sandbox(guest: Path, tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox directory (short enough for a unix socket path), the partitioned rootfs and
    a two-queue tap; what is left is removed afterwards (Kata's ``cleanupVM``)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun for the tap endpoint")
    if shutil.which("tune2fs") is None:
        pytest.skip("needs tune2fs (e2fsprogs) to give the rootfs a journal")
    vm_path = Path(tempfile.mkdtemp(prefix="kata-"))
    tap = "kt" + secrets.token_hex(4)
    fds = open_tap_queues(tap, 2)
    params = f"{HOST_APPEND} init=/init guest.halt=none {cmd_arg(GUEST)}"
    box = Sandbox(vm_path, guest / "vmlinux", partitioned_rootfs(guest / "rootfs.ext4",
                                                                tmp_path / "rootfs.img"),
                  fds, params)
    try:
        yield box
    finally:
        for fd in box.tap_fds:
            os.close(fd)
        shutil.rmtree(vm_path, ignore_errors=True)


def test_kata_driver_replay(sandbox: Sandbox, boot_lock: None, tmp_path: Path) -> None:
    """Kata's exact StratoVirt command line boots the guest, govmm's QMP sequence hot-adds
    a disk the guest reads and removes it, and SIGKILL leaves nothing behind."""
    hot = tmp_path / "hot.img"
    hot.write_bytes(HOT_DATA.ljust(4 << 20, b"\0"))
    tap = Path("/sys/class/net") / _tap_name(sandbox.tap_fds[0])
    with open(tmp_path / "stderr", "wb") as err:
        proc = sandbox.launch(err)
    for fd in sandbox.tap_fds:                  # StartVM closes s.fds after the launch
        os.close(fd)
    sandbox.tap_fds = []
    try:
        console = ConsoleReader(sandbox.console, 60, proc)
        wait_vm = GovmmQmp(sandbox.qmp, 60)     # waitVM: connect, capabilities, close
        assert wait_vm.version[0] >= 5
        assert wait_vm.execute("qmp_capabilities") == {}
        wait_vm.close()

        console.wait(r"KATA-WAIT-HOTPLUG vdb=0\n", GUEST_TIMEOUT)
        qmp = GovmmQmp(sandbox.qmp, 30)         # qmpSetup for hotplugBlk
        assert qmp.execute("qmp_capabilities") == {}
        assert qmp.execute("blockdev-add", {
            "driver": "raw", "read-only": False, "node-name": DRIVE_ID,
            "file": {"driver": "file", "filename": str(hot), "aio": "native"}}) == {}
        assert qmp.execute("device_add", {"id": DRIVE_ID, "driver": "virtio-blk-mmio",
                                          "drive": DRIVE_ID, "addr": "1", "romfile": ""}) == {}
        cpus = qmp.execute("query-cpus")        # GetThreadIDs
        hot_seen = console.wait(r"KATA-HOT size=(\d+) data=(\S*)\n")
        assert qmp.execute("device_del", {"id": DRIVE_ID},
                           event=("DEVICE_DELETED", "device", DRIVE_ID)) == {}
        console.wait(r"KATA-UNPLUGGED size=0\n")
        sockets = bound_unix_paths(proc.pid)
        kids = children(proc.pid)
        threads = {int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task")}
        os.kill(proc.pid, signal.SIGKILL)       # StopVM
        assert proc.wait(30) == -signal.SIGKILL
        qmp.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = console.text
    found = "\n".join(line for line in out.splitlines() if line.startswith("KATA-"))
    assert (hot_seen.group(1), hot_seen.group(2)) == (str((4 << 20) // 512), HOT_DATA.decode())
    assert "KATA-CPUS 1\n" in out, found
    root = re.search(r"KATA-ROOT (\S+) / ext4 (\S+) .* vda1=(\d+)\n", out)
    assert root and root.group(2).startswith("ro,"), found
    assert root.group(3) == str((guest_rootfs_size(sandbox)) // 512), found
    assert re.search(r"KATA-CONSOLE (\S+ )*hvc0\n", out), found
    assert re.search(r"KATA-RNG virtio_rng\.\d+\n", out), found
    assert f"KATA-NET {MAC}\n" in out, found
    assert [c["CPU"] for c in cpus] == [0]
    assert cpus[0]["thread_id"] in threads - {proc.pid}     # the vCPU's own thread
    assert not kids
    assert sockets == {str(sandbox.qmp), str(sandbox.console)}
    assert sorted(p.name for p in sandbox.vm_path.iterdir()) == ["console.socket", "qmp.socket"]
    deadline = time.monotonic() + 10
    while tap.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tap.exists(), f"{tap.name} outlived the VMM"
    assert not any(Path(f"/proc/{pid}").exists() for pid in [proc.pid, *kids])


def guest_rootfs_size(sandbox: Sandbox) -> int:
    """The size of the rootfs partition (the image after its first 1 MiB)."""
    return sandbox.rootfs.stat().st_size - 2048 * 512


def _tap_name(fd: int) -> str:
    """The interface a tap fd is attached to (TUNGETIFF)."""
    name, _flags = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNGETIFF, bytes(40)))
    return name.split(b"\0", 1)[0].decode()


@pytest.mark.parametrize(("extra", "needle"), [
    (["-device", "vhost-vsock-device,id=vsock-id,guest-cid=3"],
     "-device vhost-vsock-device: /dev/vhost-vsock does not exist on this host"),
    (["-device", "vhost-vsock-device,id=vsock-id,guest-cid=3,vhostfd=5"],
     "-device vhost-vsock-device: vhostfd=5: fd 5 is not open here"),
    (["-chardev", "socket,id=virtio_fs,path={vm}/virtiofs_kata.socket,server,nowait",
      "-device", "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0"],
     "-device: unknown device driver 'vhost-user-fs-device' (no installed plugin provides it"),
])
def test_kata_devices_this_host_cannot_serve(sandbox: Sandbox, extra: list[str],
                                             needle: str) -> None:
    """Kata's vhost-vsock-device (without vhostfd=, or naming a fd the parent did not pass)
    and vhost-user-fs-device, appended to its command line as its getParams write them, are
    refused before anything starts: exit 2, the option and the reason named, and no socket
    made."""
    if os.path.exists("/dev/vhost-vsock") and "does not exist" in needle:
        pytest.skip("this host has /dev/vhost-vsock")
    sandbox.extra = [arg.replace("{vm}", str(sandbox.vm_path)) for arg in extra]
    proc = sandbox.launch(subprocess.PIPE)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert needle in err.decode(), err
    assert list(sandbox.vm_path.iterdir()) == []
