"""StratoVirt 2.x's console spelling: ``-device virtio-serial-device`` + ``-chardev socket`` (or
``file``) + ``-device virtconsole,chardev=ID``, as Kata's driver writes it, beside v0.3's
``-chardev``; and the file back end itself."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import stratovmm_console.plugin as plugin
from stratovmm_console.device import TRANSMITQ, ConsoleDevice
from stratovmm_console.logfile import ConsoleFile

from stratovmm.api import ConfigError, EventLoop
from stratovmm.testing.config import help_text, parse_config
from stratovmm.testing.harness import DeviceHarness
from stratovmm.testing.virtqueue import Buffer

PLUGINS = {"console": plugin}


def consoles(*argv: str) -> list[dict[str, Any]]:
    doc = parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document
    items: list[dict[str, Any]] = doc.get("console", [])
    return items


def test_kata_console_line() -> None:
    """Kata's debug console (the three options, in Kata's order) is one console item on
    the chardev's socket, named by the virtconsole's id; v0.3's -chardev works beside it."""
    assert consoles("-device", "virtio-serial-device,id=virtio-serial0",
                    "-chardev", "socket,id=charconsole0,path=/run/c.sock,server,nowait",
                    "-device", "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
                    "-chardev", "id=old,path=/run/old.sock") == [
        {"console_id": "virtio-console0", "socket_path": "/run/c.sock"},
        {"console_id": "old", "socket_path": "/run/old.sock"}]


@pytest.mark.parametrize(("argv", "needle"), [
    (["-chardev", "socket,id=c,path=/a,server,nowait", "-device", "virtconsole,chardev=c,id=p"],
     "-device virtconsole: needs a -device virtio-serial-device on the command line too"),
    (["-device", "virtio-serial-device", "-chardev", "stdio,id=c",
      "-device", "virtconsole,chardev=c,id=p"],
     "chardev 'c' is stdio; the console serves a unix .* or a pty"),
    (["-device", "virtio-serial-device", "-chardev", "socket,id=c,path=/a",
      "-device", "virtconsole,chardev=c,id=p"], "chardev 'c' needs both server and nowait"),
    (["-device", "virtio-serial-device", "-chardev", "socket,id=c,path=/a,server,nowait",
      "-device", "virtconsole,chardev=c,id=p,nr=1"], "nr=1: each virtconsole is port 0"),
    (["-device", "virtio-serial-device", "-device", "virtconsole,chardev=c,id=p"],
     "-device virtconsole: no -chardev with id 'c'"),
    (["-device", "virtio-serial-device", "-device", "virtio-serial-device"],
     "-device virtio-serial-device: given twice"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """A virtconsole without its bus, on stdio or a socket that does not listen, on a
    port other than 0 or on a missing chardev, and a second bus are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        consoles(*argv)


def test_help_shows_both_forms() -> None:
    """--help lists v0.3's -chardev id=,path= and 2.x's virtio-serial-device/virtconsole."""
    text = help_text(PLUGINS)
    for needle in ("-chardev id=ID,path=SOCKET", "-device virtio-serial-device",
                   "-device virtconsole,chardev=ID,id=ID"):
        assert needle in text


def test_virtconsole_on_a_file_chardev(tmp_path: Path) -> None:
    """-device virtconsole over -chardev file is a console item with file_path."""
    log = str(tmp_path / "guest.log")
    assert consoles("-device", "virtio-serial-device", "-chardev", f"file,id=f,path={log}",
                    "-device", "virtconsole,chardev=f,id=con0") == [
        {"console_id": "con0", "file_path": log}]


@pytest.mark.parametrize(("item", "needle"), [
    ({"console_id": "c"}, "console 'c': give exactly one of socket_path, file_path and pty"),
    ({"console_id": "c", "socket_path": "/tmp/a.sock", "pty": True}, "give exactly one"),
    ({"console_id": "c", "socket_path": "/tmp/a.sock", "file_path": "/tmp/a.log"},
     "give exactly one"),
    ({"console_id": "c", "file_path": "/nonexistent-dir/a.log"},
     "-chardev file path .*its directory does not exist"),
])
def test_console_file_path_refusals(tmp_path: Path, item: dict[str, Any], needle: str) -> None:
    """A console with none or two of socket_path, file_path and pty, or a file in a missing
    directory, is refused before any device exists, naming it."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"console": [item]}))
    with pytest.raises(ConfigError, match=needle):
        consoles("-config", str(config))


def test_file_console_appends_guest_output(tmp_path: Path) -> None:
    """Guest output on the transmitq is appended to the file (earlier content kept, mode
    0600 when created), each buffer returned with length 0; a symlink is refused."""
    path = tmp_path / "guest.log"
    path.write_bytes(b"earlier run\n")
    loop = EventLoop("console-file-test")
    device = ConsoleDevice("con0", ConsoleFile(str(path)))
    h = DeviceHarness(device, queue_size=16, loop=loop)
    h.start()
    heads = []
    for data in (b"hello ", b"from the guest\n"):
        addr = h.alloc(len(data))
        h.memory.write(addr, data)
        heads.append(h.queues[TRANSMITQ].add_chain([Buffer(addr, len(data))]))
    h.kick(TRANSMITQ)
    h.run()
    device.close()
    assert path.read_bytes() == b"earlier run\nhello from the guest\n"
    assert h.queues[TRANSMITQ].used_elements() == [(head, 0) for head in heads]
    fresh = tmp_path / "fresh.log"
    ConsoleFile(str(fresh)).close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    (tmp_path / "link.log").symlink_to(fresh)
    with pytest.raises(ConfigError, match=r"cannot open .*link\.log"):
        ConsoleFile(str(tmp_path / "link.log"))
