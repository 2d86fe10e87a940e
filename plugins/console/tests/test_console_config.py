"""``-chardev`` / ``"console"``: option syntax, JSON key, and refused configurations."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import stratovmm_console.plugin as plugin

from stratovmm.api import ConfigError, SeccompRules
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"console": plugin}


def check(argv: list[str]) -> dict[str, Any]:
    """Parse, validate and run the plugin's config check; returns the merged document."""
    return parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document


def test_chardev_becomes_console_items(tmp_path: Path) -> None:
    """Each -chardev id=,path= is one "console" item with StratoVirt's field names."""
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    doc = check(["-chardev", f"id=c0,path={a}", "-chardev", f"id=c1,path={b}"])
    assert doc["console"] == [{"console_id": "c0", "socket_path": a},
                              {"console_id": "c1", "socket_path": b}]


def test_json_console_key_and_cmdline_override(tmp_path: Path) -> None:
    """The JSON file's "console" list works; -chardev with the same id wins."""
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"console": [{"console_id": "c0", "socket_path": a}]}))
    assert check(["-config", str(cfg)])["console"] == [{"console_id": "c0", "socket_path": a}]
    doc = check(["-config", str(cfg), "-chardev", f"id=c0,path={b}"])
    assert doc["console"] == [{"console_id": "c0", "socket_path": b}]


def test_help_lists_chardev() -> None:
    """--help shows the plugin's option with its syntax."""
    assert "-chardev id=ID,path=SOCKET" in help_text(PLUGINS)


@pytest.mark.parametrize("argv,needle", [
    (["-chardev", "id=c0"], "missing path="),
    (["-chardev", "path=/tmp/x.sock"], "missing id="),
    (["-chardev", "id=c0,path=/tmp/x.sock,mode=raw"], "unknown key 'mode'"),
    (["-chardev", "id=a/b,path=/tmp/x.sock"], "must be letters, digits"),
    (["-chardev", "id=c0,path=/tmp/a.sock", "-chardev", "id=c0,path=/tmp/b.sock"],
     "duplicate id 'c0'"),
])
def test_bad_syntax_is_refused(argv: list[str], needle: str) -> None:
    """Malformed -chardev options are errors naming the option and the key."""
    with pytest.raises(ConfigError, match="-chardev") as info:
        check(argv)
    assert needle in str(info.value)


def test_bad_json_key_is_refused(tmp_path: Path) -> None:
    """An unknown key in a "console" item of the JSON file is refused, named."""
    cfg = tmp_path / "vm.json"
    cfg.write_text(json.dumps({"console": [{"console_id": "c0", "socket_path": "/tmp/x.sock",
                                            "speed": 9600}]}))
    with pytest.raises(ConfigError, match="speed"):
        check(["-config", str(cfg)])


def test_two_consoles_on_one_socket_are_refused(tmp_path: Path) -> None:
    """Two consoles cannot share a socket path (the second would replace the first's)."""
    a = str(tmp_path / "a.sock")
    with pytest.raises(ConfigError, match="already the socket of console 'c0'"):
        check(["-chardev", f"id=c0,path={a}", "-chardev", f"id=c1,path={tmp_path}/./a.sock"])


def test_more_than_eight_consoles_are_refused(tmp_path: Path) -> None:
    """The guest has /dev/hvc0..hvc7: a ninth console is refused."""
    argv = []
    for n in range(9):
        argv += ["-chardev", f"id=c{n},path={tmp_path}/{n}.sock"]
    with pytest.raises(ConfigError, match="at most 8"):
        check(argv)


def test_unwritable_socket_path_is_refused_before_any_device(tmp_path: Path) -> None:
    """A socket path in a missing directory is refused by the config check (no socket of an
    earlier console is left behind), naming the option and the console."""
    good = tmp_path / "good.sock"
    with pytest.raises(ConfigError, match=r"-chardev path \(console 'c1'\).*does not exist"):
        check(["-chardev", f"id=c0,path={good}",
               "-chardev", f"id=c1,path={tmp_path}/nodir/c.sock"])
    assert not good.exists()


def test_existing_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    """A regular file at the path is not replaced: error, file untouched."""
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(ConfigError, match="not a socket"):
        check(["-chardev", f"id=c0,path={target}"])
    assert target.read_text() == "mine"


def test_stale_socket_passes_the_check(tmp_path: Path) -> None:
    """A leftover socket file is acceptable: the device replaces it."""
    path = tmp_path / "old.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()
    check(["-chardev", f"id=c0,path={path}"])


def test_seccomp_rules_name_real_syscalls() -> None:
    """The plugin's seccomp rules are syscalls the core's filter builder accepts."""
    import pyseccomp

    rules = SeccompRules("console")
    plugin.vmm_seccomp_rules(rules)
    assert set(rules.owners["accept4"]) == {"console"}
    for name in rules.syscalls:
        assert int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)) >= 0
    assert rules.ioctls
