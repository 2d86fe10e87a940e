"""StratoVirt 2.x's ``-serial chardev:ID`` beside v0.3's ``-serial stdio``: on each back end 2.x
takes (stdio, pty, socket, file), and those back ends themselves on real ptys, sockets and
files."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import stratovmm_serial.plugin as plugin
from stratovmm_serial.chardev import FileSink, PtyChannel, SocketServer

from stratovmm.api import ConfigError, EventLoop
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"serial": plugin}


def serial(*argv: str) -> dict[str, Any]:
    item: dict[str, Any] = parse_config(["-kernel", "/boot/none", *argv],
                                        PLUGINS).document["serial"]
    return item


@pytest.mark.parametrize("argv", [
    ["-serial", "stdio"], ["-serial", "chardev:con0", "-chardev", "stdio,id=con0"],
    ["-chardev", "stdio,id=con0", "-serial", "chardev:con0"],
])
def test_serial_on_stdio(argv: list[str]) -> None:
    """-serial stdio and -serial chardev:ID over a -chardev stdio both bind the UART to
    stdio."""
    assert serial(*argv) == {"stdio": True}


@pytest.mark.parametrize(("value", "item"), [
    ("pty", {"pty": True, "chardev_id": "serial_chardev"}),
    ("socket,path=/run/s.sock,server,nowait", {"socket_path": "/run/s.sock"}),
    ("file,path=/var/log/ttyS0.log", {"file_path": "/var/log/ttyS0.log"}),
])
def test_serial_back_end_written_in_place(value: str, item: dict[str, Any]) -> None:
    """2.x's -serial pty / socket,path=,server,nowait / file,path= (a chardev written in
    place; a pty is labelled serial_chardev, 2.x's id for it)."""
    assert serial("-serial", value) == item


@pytest.mark.parametrize(("chardev", "item"), [
    ("pty,id=c", {"pty": True, "chardev_id": "c"}),
    ("socket,id=c,path=/run/s.sock,server,nowait", {"socket_path": "/run/s.sock"}),
    ("file,id=c,path=/var/log/ttyS0.log", {"file_path": "/var/log/ttyS0.log"}),
])
def test_serial_on_other_chardevs(chardev: str, item: dict[str, Any]) -> None:
    """-serial chardev:ID over a pty, a listening socket or a file names that far end."""
    assert serial("-chardev", chardev, "-serial", "chardev:c") == item


@pytest.mark.parametrize(("argv", "needle"), [
    (["-serial", "chardev:c", "-chardev", "socket,id=c,path=/a,server"],
     "-serial chardev: chardev 'c' needs both server and nowait"),
    (["-serial", "chardev:c"], "-serial chardev: no -chardev with id 'c'"),
    (["-serial", "chardev:c", "-serial", "stdio", "-chardev", "stdio,id=c"], "given twice"),
    (["-serial", "bogus"], "-serial: backend='bogus': must be one of stdio, pty, socket, file"),
    (["-serial", "socket,path=/a"], "-serial: socket: needs both server and nowait"),
    (["-serial", "file"], "-serial: file: path= is needed by socket and file, and only"),
    (["-serial", "pty,path=/a"], "-serial: pty: path= is needed by socket and file"),
    (["-serial", "stdio,nowait"], "-serial: stdio: server and nowait are a socket's"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """A socket that does not listen and not wait, a missing chardev, two serial ports, an
    unknown back end and keys a back end does not take are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        serial(*argv)


@pytest.mark.parametrize(("item", "needle"), [
    ({"stdio": True, "pty": True}, "serial: give one of .*, not stdio and pty"),
    ({"file_path": "/nonexistent-dir/ttyS0.log"}, "its directory does not exist"),
    ({"socket_path": "/nonexistent-dir/s.sock"}, "-chardev socket path"),
])
def test_bad_far_ends_are_refused(tmp_path: Path, item: dict[str, Any], needle: str) -> None:
    """Two far ends, a file in a missing directory or an unusable socket path are refused
    before any device exists, naming the option."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"serial": item}))
    with pytest.raises(ConfigError, match=needle):
        serial("-config", str(config))


def test_help_shows_both_forms() -> None:
    """--help lists -serial stdio and -serial chardev:ID with its back ends."""
    text = help_text(PLUGINS)
    assert "-serial stdio" in text and "-serial chardev:ID" in text
    assert "stdio, pty, socket or file" in text
    assert "-serial stdio|pty|socket,path=SOCKET,server,nowait|file,path=FILE" in text


class Fifo:
    """The UART's host-side interface, with a FIFO of ``room`` bytes."""

    def __init__(self, room: int = 64) -> None:
        self.room = room
        self.got = bytearray()

    def rx_space(self) -> int:
        return self.room - len(self.got)

    def receive(self, data: bytes) -> int:
        self.got += data
        return len(data)


def turns(loop: EventLoop, fd: int | None = None, count: int = 5) -> None:
    """Run the loop; with ``fd``, first wait until it is readable (a pty hands bytes over
    asynchronously)."""
    if fd is not None:
        select.select([fd], [], [], 2.0)
    for _ in range(count):
        loop.run_once(0.01)


def drain(fd: int) -> bytes:
    select.select([fd], [], [], 2.0)
    out = bytearray()
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_pty_carries_output_and_input(capsys: pytest.CaptureFixture[str]) -> None:
    """On a pty: the path is announced, output reaches the slave raw, typed bytes reach the
    FIFO only up to its room, and the rest once the guest drains it."""
    loop = EventLoop("serial-pty-test")
    channel = PtyChannel(loop, "cser")
    assert f"char device redirected to {channel.path} (label cser)" in capsys.readouterr().err
    fifo = Fifo(room=4)
    channel.attach(fifo)
    slave = os.open(channel.path, os.O_RDWR | os.O_NOCTTY)
    try:
        for byte in b"boot\n":
            channel.write(bytes([byte]))
        assert drain(slave) == b"boot\n"
        os.write(slave, b"abcdefg")
        turns(loop, channel._pty.master)
        assert bytes(fifo.got) == b"abcd"
        fifo.got.clear()
        channel.rx_space_available()
        turns(loop)
        assert bytes(fifo.got) == b"efg"
    finally:
        os.close(slave)
        channel.close()


def test_pty_output_nobody_reads_is_bounded() -> None:
    """With nobody reading the pty, writes never block: past the terminal's buffer at most
    OUTPUT_BUFFER bytes wait, the oldest are dropped and counted (in the stats), and the
    loop is woken once for the stall, not once per write."""
    loop = EventLoop("serial-pty-full")
    channel = PtyChannel(loop, "cser")
    try:
        channel.attach(Fifo())
        queued = loop.pending_calls()
        for _ in range(300):
            channel.write(b"x" * 1024)
        assert channel.buffered == 64 * 1024
        assert channel.dropped > 0
        assert channel.stats() == {"output_dropped": channel.dropped,
                                   "output_buffered": 64 * 1024}
        assert loop.pending_calls() == queued + 1     # one wake-up for the stall, not per write
    finally:
        channel.close()


def test_socket_server_newest_client_wins(tmp_path: Path) -> None:
    """On a socket: output before any client waits and is delivered on connect; a second
    client replaces the first (EOF), gets later output and its bytes reach the FIFO, and
    still gets output after it shuts down its sending side."""
    loop = EventLoop("serial-socket-test")
    path = str(tmp_path / "s.sock")
    channel = SocketServer(loop, path)
    fifo = Fifo()
    channel.attach(fifo)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        channel.write(b"early ")
        first.connect(path)
        turns(loop)
        assert first.recv(100) == b"early "
        second.connect(path)
        turns(loop)
        first.settimeout(2)
        assert first.recv(100) == b""
        channel.write(b"later")
        second.settimeout(2)
        assert second.recv(100) == b"later"
        second.sendall(b"in")
        turns(loop, None)
        assert bytes(fifo.got) == b"in"
        second.shutdown(socket.SHUT_WR)          # no more input, output still wanted
        turns(loop)
        channel.write(b"after")
        assert second.recv(100) == b"after"
    finally:
        first.close()
        second.close()
        channel.close()
    assert not os.path.exists(path)


def test_file_appends_output(tmp_path: Path) -> None:
    """On a file: output is appended (earlier content kept), mode 0600 when created; a
    symlink is refused."""
    path = tmp_path / "ttyS0.log"
    path.write_bytes(b"before\n")
    sink = FileSink(str(path))
    sink.write(b"a")
    sink.write(b"b\n")
    sink.close()
    assert path.read_bytes() == b"before\nab\n"
    fresh = tmp_path / "fresh.log"
    FileSink(str(fresh)).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    (tmp_path / "link.log").symlink_to(fresh)
    with pytest.raises(ConfigError, match=r"cannot open .*link\.log"):
        FileSink(str(tmp_path / "link.log"))


def test_a_pty_hang_up_is_not_spun_on() -> None:
    """If the pty's master reports a hang-up (the VMM's own slave fd closed, which nothing
    else does), it is not watched until a retry timer fires."""
    loop = EventLoop("serial-pty-hup")
    channel = PtyChannel(loop, "cser")
    try:
        channel.attach(Fifo())
        turns(loop)
        master = channel._pty.master
        assert loop.watching(master)
        os.close(channel._pty._slave)
        channel._pty._slave = -1
        turns(loop)
        assert not loop.watching(master)
        assert len(loop.pending_timers()) == 1
    finally:
        channel.close()
