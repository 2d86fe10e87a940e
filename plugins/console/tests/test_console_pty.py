"""virtconsole on a ``-chardev pty``: the 2.x spelling, and the pseudo-terminal port itself
(a real pty: guest output to it raw, typed bytes to the guest, a bounded buffer while nobody
reads it, the path announced as QEMU announces it)."""

from __future__ import annotations

import os
import select
import termios
from collections.abc import Iterator

import pytest
import stratovmm_console.plugin as plugin
from stratovmm_console.device import RECEIVEQ, TRANSMITQ, ConsoleDevice
from stratovmm_console.ptyport import ConsolePty

from stratovmm.api import EventLoop
from stratovmm.testing.config import parse_config
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

CAPACITY = 1000


def test_virtconsole_on_a_pty_chardev() -> None:
    """-device virtconsole over -chardev pty is a console item with pty and the chardev's
    id (the label the path is announced with)."""
    doc = parse_config(["-kernel", "/boot/none", "-device", "virtio-serial-device",
                        "-chardev", "pty,id=cpty", "-device", "virtconsole,chardev=cpty,id=c0"],
                       {"console": plugin}).document
    assert doc["console"] == [{"console_id": "c0", "pty": True, "chardev_id": "cpty"}]


class PtyConsole:
    """A started console device on a new pty, and the slave opened as a reader would."""

    def __init__(self) -> None:
        self.loop = EventLoop("console-pty-test")
        self.port = ConsolePty("cpty", self.loop, capacity=CAPACITY)
        self.device = ConsoleDevice("con0", self.port)
        self.h = DeviceHarness(self.device, queue_size=16, loop=self.loop)
        self.h.start()
        self.slave = os.open(self.port.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    def transmit(self, data: bytes) -> None:
        addr = self.h.alloc(len(data))
        self.h.memory.write(addr, data)
        self.h.queues[TRANSMITQ].add_chain([Buffer(addr, len(data))])
        self.h.kick(TRANSMITQ)
        self.h.run()

    def read_slave(self, wait: float = 2.0) -> bytes:
        """What the slave has; a pty hands bytes over asynchronously, so wait for the first."""
        select.select([self.slave], [], [], wait)
        out = bytearray()
        while True:
            try:
                chunk = os.read(self.slave, 65536)
            except BlockingIOError:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        os.close(self.slave)
        self.device.close()


@pytest.fixture
def console() -> Iterator[PtyConsole]:
    made = PtyConsole()
    yield made
    made.close()


def test_path_is_announced_as_qemu_does(capsys: pytest.CaptureFixture[str]) -> None:
    """Opening the pty prints "char device redirected to /dev/pts/N (label ID)" on stderr,
    and the slave is in raw mode (no echo, no line editing, no CR/NL translation)."""
    port = ConsolePty("cpty", EventLoop("console-pty-announce"))
    try:
        assert f"char device redirected to {port.path} (label cpty)" in capsys.readouterr().err
        assert port.path.startswith("/dev/pts/")
        slave = os.open(port.path, os.O_RDWR | os.O_NOCTTY)
        try:
            lflag = termios.tcgetattr(slave)[3]
            oflag = termios.tcgetattr(slave)[1]
            assert not lflag & (termios.ECHO | termios.ICANON)
            assert not oflag & termios.OPOST
        finally:
            os.close(slave)
    finally:
        port.close()


def test_guest_output_reaches_the_pty_unchanged(console: PtyConsole) -> None:
    """Transmitted bytes are read from the slave as the guest wrote them (no CR added)."""
    console.transmit(b"hello\nworld\n")
    assert console.read_slave() == b"hello\nworld\n"


def test_output_nobody_reads_is_bounded_and_flushed_later(console: PtyConsole) -> None:
    """With nobody reading, the terminal fills, then at most CAPACITY bytes wait (the oldest
    dropped and counted) and every buffer is still returned; once read, the newest bytes
    arrive in order."""
    chunk = bytes(range(256)) * 4
    for _ in range(200):                          # 200 KiB: far past the terminal's buffer
        console.transmit(chunk)
    assert console.h.queues[TRANSMITQ].used_idx() == 200
    assert console.port.buffered == CAPACITY
    dropped = console.device.stats()["output_dropped"]
    assert dropped > 0
    got = bytearray(console.read_slave())
    for _ in range(100):
        console.h.run()
        more = console.read_slave(0.5)
        got += more
        if not more and not console.port.buffered:
            break
    assert len(got) + dropped == 200 * len(chunk)
    assert got.endswith(chunk[-CAPACITY:])
    assert console.port.buffered == 0


def test_typed_bytes_reach_a_receive_buffer(console: PtyConsole) -> None:
    """Bytes written to the slave fill the guest's posted receive buffer, raw (CR kept)."""
    addr = console.h.alloc(64)
    head = console.h.queues[RECEIVEQ].add_chain([Buffer(addr, 64, True)])
    console.h.kick(RECEIVEQ)
    os.write(console.slave, b"typed\r\n")
    select.select([console.port._pty.master], [], [], 2.0)   # the pty hands bytes over
    console.h.run()
    assert console.h.queues[RECEIVEQ].used_elements() == [(head, 7)]
    assert console.h.memory.read(addr, 7) == b"typed\r\n"


def test_input_is_not_watched_without_receive_buffers(console: PtyConsole) -> None:
    """With no receive buffer posted, typed bytes stay in the terminal: the master is not
    watched for input, so the loop cannot spin on them."""
    os.write(console.slave, b"early")
    assert select.select([console.port._pty.master], [], [], 2.0)[0]
    console.h.run()
    assert console.port._pty.master not in console.loop.ready()


def test_a_hang_up_is_not_spun_on(console: PtyConsole) -> None:
    """If the master reports a hang-up (here: the VMM's own slave fd closed, which nothing
    else does), the terminal is not watched until a retry timer fires, so the loop cannot
    spin on a level-triggered HUP."""
    addr = console.h.alloc(64)
    console.h.queues[RECEIVEQ].add_chain([Buffer(addr, 64, True)])
    console.h.kick(RECEIVEQ)
    master = console.port._pty.master
    assert console.loop.watching(master)
    os.close(console.slave)
    os.close(console.port._pty._slave)
    console.port._pty._slave = -1
    console.slave = os.open("/dev/null", os.O_RDONLY)      # for the fixture's close
    console.h.run()
    assert not console.loop.watching(master)
    assert any(t.callback == console.port._resume for t in console.loop.pending_timers())
