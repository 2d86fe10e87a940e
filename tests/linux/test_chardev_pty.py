"""StratoVirt 2.x's character back ends with the real Linux guest, one boot: a virtconsole on
``-chardev pty`` and the serial port on ``-serial chardev:`` over a ``-chardev socket``.

The VMM prints the pty's path as QEMU does (``char device redirected to /dev/pts/N
(label ID)``); the host opens it like a terminal program would.  The serial is the
kernel's console (``console=ttyS0``), so the /init markers and the guest's reports
arrive on the socket instead of stdout.

    guest                                       host
    PTY-READY → hvc0                            reads it from the pty, types a line
    read a line from hvc0, GOT=… → ttyS0        reads GOT=… from the serial socket
    HVC-BACK=… → hvc0                           reads it from the pty
    SERIAL-READY → ttyS0, read a ttyS0 line     reads it from the socket, sends a line
    SERIAL-GOT=… → ttyS0                        reads it from the socket
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stratovmm.testing.guest import (
    GUEST_TIMEOUT,
    HOST_APPEND,
    boot_lock,
    cmd_arg,
    stratovmm_command,
)

STEP_TIMEOUT = 90.0
TYPED = b"typed-into-the-pty 42"
SERIAL_LINE = b"sent-to-the-serial-socket 7"

GUEST_SCRIPT = r"""
exec 3<>/dev/hvc0
stty -F /dev/hvc0 raw -echo
echo PTY-READY >&3
read -t 60 -r line <&3; echo "GOT=$line"
echo "HVC-BACK=$line" >&3
exec 4</dev/ttyS0
echo SERIAL-READY
read -t 60 -r sline <&4; echo "SERIAL-GOT=$sline"
"""

PTY_LINE = re.compile(rb"char device redirected to (/dev/pts/\d+) \(label cpty\)")


class Reader:
    """Collects what ``recv`` delivers, on a thread, until EOF or an error."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self.data = bytearray()
        self.eof = False
        self._recv = recv
        self._cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                chunk = self._recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                self.data += chunk
                self.eof = not chunk
                self._cond.notify_all()
            if not chunk:
                return

    def wait_for(self, pattern: re.Pattern[bytes] | bytes,
                 timeout: float = STEP_TIMEOUT) -> re.Match[bytes] | None:
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self._cond:
            while (found := regex.search(self.data)) is None and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return found


def query_chardev(path: str) -> object:
    """QMP ``query-chardev``'s return value (after the greeting)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
        qmp.settimeout(30)
        qmp.connect(path)
        lines = qmp.makefile("rb")
        lines.readline()                                     # the greeting
        qmp.sendall(b'{"execute": "query-chardev"}\n')
        return json.loads(lines.readline())["return"]


@dataclass
class PtyBoot:
    """What the boot produced."""

    rc: int | None = None
    pty_path: str = ""
    query_chardev: object = None
    pty: bytes = b""
    serial: bytes = b""
    stderr: str = ""
    steps: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return (f"rc={self.rc} steps={self.steps} pty={self.pty_path}"
                f" query-chardev={self.query_chardev}\nstderr:\n"
                f"{self.stderr[-3000:]}\npty data={self.pty[-500:]!r}\n"
                f"serial tail={self.serial[-2000:]!r}")


def drive(guest: Path, workdir: Path) -> PtyBoot:
    """Boot and play the host's side through the pty and the serial socket."""
    result = PtyBoot()
    serial_sock, qmp_sock = str(workdir / "serial.sock"), str(workdir / "qmp.sock")
    args = [*stratovmm_command(), "-smp", "1", "-m", "256", "-kernel", str(guest / "vmlinux"),
            "-initrd", str(guest / "initramfs.cpio"), "-qmp", f"unix:{qmp_sock},server,nowait",
            "-chardev", f"socket,id=cser,path={serial_sock},server,nowait",
            "-serial", "chardev:cser",
            "-device", "virtio-serial-device", "-chardev", "pty,id=cpty",
            "-device", "virtconsole,chardev=cpty,id=con0",
            "-append", HOST_APPEND + " " + cmd_arg(GUEST_SCRIPT)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err_fd = proc.stderr.fileno()
    err = Reader(lambda n: os.read(err_fd, n))
    opened: list[Callable[[], None]] = []
    try:
        found = err.wait_for(PTY_LINE, 30)
        if found is None:
            return result
        result.pty_path = found.group(1).decode()
        result.query_chardev = query_chardev(qmp_sock)
        pty_fd = os.open(result.pty_path, os.O_RDWR | os.O_NOCTTY)
        opened.append(lambda: os.close(pty_fd))
        pty = Reader(lambda n: os.read(pty_fd, n))
        deadline = time.monotonic() + 30
        while not os.path.exists(serial_sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(serial_sock)
        opened.append(client.close)
        serial = Reader(client.recv)
        result.steps.append("connected")
        if pty.wait_for(b"PTY-READY\n", GUEST_TIMEOUT) is None:
            return result
        os.write(pty_fd, TYPED + b"\n")
        if serial.wait_for(b"GOT=" + TYPED) is None or pty.wait_for(b"HVC-BACK=") is None:
            return result
        result.steps.append("pty")
        if serial.wait_for(b"SERIAL-READY") is None:
            return result
        time.sleep(1.0)       # the guest's read opens ttyS0 after printing: let it block first
        client.sendall(SERIAL_LINE + b"\n")
        if serial.wait_for(b"SERIAL-GOT=") is None:
            return result
        result.steps.append("serial")
        proc.wait(timeout=STEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        result.rc = proc.wait()
        err.wait_for(b"\0never", 5)
        result.stderr = err.data.decode(errors="replace")
        if "pty" in locals():
            result.pty = bytes(pty.data)
        if "serial" in locals():
            serial.wait_for(b"\0never", 5)
            result.serial = bytes(serial.data)
        for close in opened:
            close()
    return result


@pytest.fixture(scope="module")
def boot(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> PtyBoot:
    """The one boot every test below reads from."""
    workdir = Path(tmp_path_factory.mktemp("chardev"))
    with boot_lock():
        return drive(guest, workdir)


def test_the_pty_path_is_announced_and_the_vmm_exits_0(boot: PtyBoot) -> None:
    """The VMM prints QEMU's "char device redirected to /dev/pts/N (label cpty)", the whole
    dialogue completes, and the guest's reboot ends the VMM with status 0."""
    assert boot.pty_path.startswith("/dev/pts/"), boot.explain()
    assert boot.steps == ["connected", "pty", "serial"], boot.explain()
    assert boot.rc == 0, boot.explain()
    assert b"GUEST-CMD-END rc=0" in boot.serial, boot.explain()


def test_query_chardev_lists_the_pty(boot: PtyBoot) -> None:
    """QMP query-chardev lists the pty by its label and path, as StratoVirt 2.x does."""
    assert boot.query_chardev == [{"label": "cpty", "filename": f"pty:{boot.pty_path}",
                                   "frontend-open": True}], boot.explain()


def test_guest_output_on_hvc0_reaches_the_pty(boot: PtyBoot) -> None:
    """What the guest writes to /dev/hvc0 is read from the pty, raw (no CR added)."""
    assert boot.pty.startswith(b"PTY-READY\n"), boot.explain()
    assert b"HVC-BACK=" + TYPED + b"\n" in boot.pty, boot.explain()


def test_a_line_typed_into_the_pty_reaches_the_guest(boot: PtyBoot) -> None:
    """A line written to the pty's slave is what the guest reads from /dev/hvc0 (and reports
    on the serial socket)."""
    assert b"GOT=" + TYPED in boot.serial, boot.explain()


def test_serial_socket_carries_the_console_both_ways(boot: PtyBoot) -> None:
    """-serial chardev: over a socket chardev: what the guest prints on ttyS0 arrives on the
    socket, and a line sent on the socket is what the guest reads from /dev/ttyS0."""
    assert b"SERIAL-READY" in boot.serial, boot.explain()
    assert b"SERIAL-GOT=" + SERIAL_LINE in boot.serial, boot.explain()
