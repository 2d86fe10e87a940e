"""StratoVirt 2.x's console spelling: ``-device virtio-serial-device`` + ``-chardev socket`` +
``-device virtconsole,chardev=ID``, as Kata's driver writes it, beside v0.3's ``-chardev``."""

from __future__ import annotations

from typing import Any

import pytest
import stratovmm_console.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

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
    (["-device", "virtio-serial-device", "-chardev", "pty,id=c",
      "-device", "virtconsole,chardev=c,id=p"], "chardev 'c' is pty; the console serves a unix"),
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
    """A virtconsole without its bus, on a chardev that is not a listening socket, on a
    port other than 0 or on a missing chardev, and a second bus are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        consoles(*argv)


def test_help_shows_both_forms() -> None:
    """--help lists v0.3's -chardev id=,path= and 2.x's virtio-serial-device/virtconsole."""
    text = help_text(PLUGINS)
    for needle in ("-chardev id=ID,path=SOCKET", "-device virtio-serial-device",
                   "-device virtconsole,chardev=ID,id=ID"):
        assert needle in text
