"""virtio-console with the real Linux guest: one boot, two consoles, every check.

The kernel command line is ``console=hvc0 console=ttyS0 ...``: the kernel log
goes to both consoles and ``/dev/console`` (the last one) stays ttyS0, so the
/init markers and the guest's reports arrive on the VMM's stdout while hvc0
and hvc1 are free for the checks.  The guest and the host take turns through
hvc1 (raw mode, no echo).  Bulk output goes through ``cat`` of a file, in
page-sized writes: each write to an hvc tty is one transmit buffer that the
guest spins on, and a kernel emulated at a few M instructions/s (kvm-pvm)
makes a line-by-line ``seq`` take minutes.

    guest                                   host
    kmsg marker (→ hvc0), write hvc0        nobody on c0: both buffered
    READY → hvc1                            (c1 connected before boot) reads READY,
    read a line from hvc1                     sends HELLO line
    seq 1 20000 (via a file) → hvc1         reads it all, compares
    head -c 32K from hvc1 | md5sum          sends 32 KiB (tty and virtio buffers fill up:
                                              the device must stop reading and resume)
                                            connects c0: gets the buffered output;
                                            connects c1b: c1 is replaced (EOF), sends BYE
    read BYE from hvc1, LAST → hvc1         c1b receives LAST
"""

from __future__ import annotations

import hashlib
import os
import random
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
SEQ_COUNT = 20000
SEQ_TEXT = b"".join(b"%d\n" % i for i in range(1, SEQ_COUNT + 1))
INPUT_BYTES = 32 * 1024

GUEST_SCRIPT = rf"""
exec 3<>/dev/hvc1
stty -F /dev/hvc1 raw -echo
echo "<2>KMSG-HVC0-MARK" > /dev/kmsg
echo HVC0-OUT-MARK > /dev/hvc0
seq 1 {SEQ_COUNT} > /tmp/seq.txt
echo READY >&3
read -t 60 -r line <&3; echo "GOT=$line"
cat /tmp/seq.txt >&3
echo "IN-MD5=$(timeout 120 head -c {INPUT_BYTES} <&3 | md5sum)"
read -t 60 -r bye <&3; echo "BYE=$bye"
echo LAST-LINE >&3
"""


class Reader:
    """Collects everything a file or socket delivers, on a thread; ``wait_for`` a needle."""

    def __init__(self, name: str, recv: Callable[[int], bytes]) -> None:
        self.name = name
        self.data = bytearray()
        self.eof = False
        self._recv = recv
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = self._recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self.eof = True
                else:
                    self.data += chunk
                self._cond.notify_all()
            if not chunk:
                return

    def wait_for(self, needle: bytes, timeout: float = STEP_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in self.data and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return needle in self.data

    def wait_eof(self, timeout: float = STEP_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.eof and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.01))
            return self.eof


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


@dataclass
class ConsoleBoot:
    """What one boot produced."""

    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    c0: bytes = b""
    c1: bytes = b""
    c1b: bytes = b""
    c1_replaced: bool = False
    input_md5: str = ""
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def explain(self) -> str:
        return (f"rc={self.rc} steps={self.steps}\nstdout:\n{self.stdout[-3000:]}\n"
                f"stderr:\n{self.stderr[-3000:]}\nc0={self.c0[-500:]!r}\nc1 tail={self.c1[-200:]!r}"
                f"\nc1b={self.c1b!r}")


def drive(guest: Path, workdir: Path) -> ConsoleBoot:
    """Boot with two consoles and play the host's side of the dialogue."""
    result = ConsoleBoot()
    s0, s1 = str(workdir / "c0.sock"), str(workdir / "c1.sock")
    append = "console=hvc0 " + HOST_APPEND + " " + cmd_arg(GUEST_SCRIPT)
    args = [*stratovmm_command(), "-smp", "1", "-m", "256M", "-kernel", str(guest / "vmlinux"),
            "-initrd", str(guest / "initramfs.cpio"), "-serial", "stdio",
            "-chardev", f"id=con0,path={s0}", "-chardev", f"id=con1,path={s1}",
            "-append", append]
    payload = random.Random(5).randbytes(INPUT_BYTES)
    start = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
    out = Reader("stdout", lambda n: os.read(stdout_fd, n))
    err = Reader("stderr", lambda n: os.read(stderr_fd, n))
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(s1) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        c1 = connect(s1)
        clients.append(c1)
        r1 = Reader("c1", c1.recv)
        if not r1.wait_for(b"READY\n", GUEST_TIMEOUT):
            return result
        result.steps.append("ready")
        c1.sendall(b"HELLO-FROM-HOST\n")
        if not r1.wait_for(b"\n%d\n" % SEQ_COUNT):
            return result
        result.steps.append("seq")
        c1.sendall(payload)
        result.input_md5 = hashlib.md5(payload).hexdigest()
        if not out.wait_for(b"IN-MD5="):
            return result
        result.steps.append("md5")
        c0 = connect(s0)
        clients.append(c0)
        r0 = Reader("c0", c0.recv)
        r0.wait_for(b"HVC0-OUT-MARK", 10)
        c1b = connect(s1)
        clients.append(c1b)
        r1b = Reader("c1b", c1b.recv)
        result.c1_replaced = r1.wait_eof(10)
        c1b.sendall(b"BYE\n")
        r1b.wait_for(b"LAST-LINE", STEP_TIMEOUT)
        result.steps.append("bye")
        proc.wait(timeout=STEP_TIMEOUT)
        r0.wait_eof(5)
        r1b.wait_eof(5)
        result.c0, result.c1b = bytes(r0.data), bytes(r1b.data)
    finally:
        if proc.poll() is None:
            proc.kill()
        result.rc = proc.wait()
        out.wait_eof(5)
        err.wait_eof(5)
        result.stdout = out.data.decode(errors="replace").replace("\r", "")
        result.stderr = err.data.decode(errors="replace")
        result.c1 = bytes(r1.data) if "r1" in locals() else b""
        for client in clients:
            client.close()
        result.seconds = time.monotonic() - start
    return result


@pytest.fixture(scope="module")
def boot(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> ConsoleBoot:
    """The one boot every test below reads from."""
    workdir = Path(tmp_path_factory.mktemp("console"))
    with boot_lock():
        result = drive(guest, workdir)
    print(f"console boot: {result.seconds:.1f} s, steps {result.steps}")
    return result


def test_guest_runs_to_the_end_and_the_vmm_exits_0(boot: ConsoleBoot) -> None:
    """The whole dialogue completes and the guest's reboot ends the VMM with status 0."""
    assert boot.steps == ["ready", "seq", "md5", "bye"], boot.explain()
    assert boot.rc == 0, boot.explain()
    assert "GUEST-CMD-END rc=0" in boot.stdout, boot.explain()


def test_kernel_log_reaches_the_socket_with_console_hvc0(boot: ConsoleBoot) -> None:
    """console=hvc0: a kernel log message arrives on console 0's socket (and on ttyS0)."""
    assert b"KMSG-HVC0-MARK" in boot.c0, boot.explain()
    assert "KMSG-HVC0-MARK" in boot.stdout, boot.explain()


def test_output_written_before_a_client_connected_is_delivered(boot: ConsoleBoot) -> None:
    """What the guest wrote to /dev/hvc0 while nobody was connected arrives on connect, in
    order after the kernel message written before it."""
    data = boot.c0.replace(b"\r", b"")
    assert b"HVC0-OUT-MARK\n" in data, boot.explain()
    assert data.index(b"KMSG-HVC0-MARK") < data.index(b"HVC0-OUT-MARK"), boot.explain()


def test_guest_reads_what_the_host_writes(boot: ConsoleBoot) -> None:
    """A line the host writes to the socket is what the guest reads from /dev/hvc1."""
    assert "GOT=HELLO-FROM-HOST\n" in boot.stdout, boot.explain()


def test_bulk_guest_output_arrives_complete_and_in_order(boot: ConsoleBoot) -> None:
    """`seq 1 20000` (~109 KB) written to /dev/hvc1 arrives byte for byte."""
    assert boot.c1.startswith(b"READY\n" + SEQ_TEXT), boot.explain()


def test_bulk_host_input_arrives_intact(boot: ConsoleBoot) -> None:
    """32 KiB from the host (more than the guest's tty and receive buffers hold at once)
    reach the guest with the same MD5: the device stopped reading and resumed, losing nothing."""
    assert f"IN-MD5={boot.input_md5}" in boot.stdout, boot.explain()


def test_a_new_client_replaces_the_old_and_gets_later_output(boot: ConsoleBoot) -> None:
    """Connecting a second client closes the first (EOF); the newest client's input reaches
    the guest and it gets the guest's later output."""
    assert boot.c1_replaced, boot.explain()
    assert "BYE=BYE\n" in boot.stdout, boot.explain()
    assert b"LAST-LINE" in boot.c1b, boot.explain()
