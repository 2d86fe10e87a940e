"""StratoVirt 2.x's ``-serial chardev:ID`` beside v0.3's ``-serial stdio``."""

from __future__ import annotations

import pytest
import stratovmm_serial.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"serial": plugin}


@pytest.mark.parametrize("argv", [
    ["-serial", "stdio"], ["-serial", "chardev:con0", "-chardev", "stdio,id=con0"],
    ["-chardev", "stdio,id=con0", "-serial", "chardev:con0"],
])
def test_serial_on_stdio(argv: list[str]) -> None:
    """-serial stdio and -serial chardev:ID over a -chardev stdio both bind the UART to
    stdio."""
    assert parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document["serial"] == {
        "stdio": True}


@pytest.mark.parametrize(("argv", "needle"), [
    (["-serial", "chardev:c", "-chardev", "socket,id=c,path=/a,server,nowait"],
     "-serial chardev: chardev 'c' is socket; the serial port here is bound to stdio only"),
    (["-serial", "chardev:c"], "-serial chardev: no -chardev with id 'c'"),
    (["-serial", "chardev:c", "-serial", "stdio", "-chardev", "stdio,id=c"], "given twice"),
    (["-serial", "pty"], "-serial: backend='pty': must be one of stdio"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """A chardev other than stdio, a missing chardev, two serial ports and other backends
    are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        parse_config(["-kernel", "/boot/none", *argv], PLUGINS)


def test_help_shows_both_forms() -> None:
    """--help lists -serial stdio and -serial chardev:ID."""
    text = help_text(PLUGINS)
    assert "-serial stdio" in text and "-serial chardev:ID" in text
