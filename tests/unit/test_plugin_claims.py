"""The options a plugin declares (the ``stratovmm.options`` entry points) decide whether a
start imports it; they must be exactly the options it registers, or a start naming an
undeclared one would miss the plugin (the parser would call the option unknown).  Also
the choice itself: which plugins a command line needs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from stratovmm import entrypoints
from stratovmm.cli import CORE_CLAIMS, build_registry
from stratovmm.config.cmdline import named_options
from stratovmm.plugin import PluginHost, _needed

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists())


def declared(name: str) -> set[str]:
    """The options plugins/NAME/pyproject.toml declares."""
    project = tomllib.loads((REPO / "plugins" / name / "pyproject.toml").read_text())["project"]
    group = project["entry-points"].get("stratovmm.options", {})
    assert set(group.values()) <= {f"stratovmm_{name}.plugin"}
    return set(group)


@pytest.mark.parametrize("name", SHIPPED)
def test_declared_options_are_the_registered_ones(name: str) -> None:
    registry = build_registry(PluginHost.discover())
    registered = {display for display, owner in registry.devices.owner.items() if owner == name}
    assert registered, name
    assert declared(name) == registered


def test_the_core_claims_what_the_core_registers() -> None:
    registry = build_registry(PluginHost.discover())
    assert {d for d, owner in registry.devices.owner.items() if owner == "core"} == CORE_CLAIMS


@pytest.mark.parametrize(("argv", "named"), [
    (["-m", "256M", "-serial", "stdio"], [("-m", ("256M",)), ("-serial", ("stdio",))]),
    (["-device", "vsock,id=v0", "-serial", "chardev:c0"],
     [("-device", ("vsock",)), ("-serial", ("chardev", "chardev:c0"))]),
    (["--drive", "id=d0,file=x"], [("-drive", ("id=d0",))]),
    (["-kernel", "k", "-api-channel", "unix:q"], None),
    (["-qmp", "unix:q,server,nowait"], None),
    (["-config", "vm.json"], None),
    (["-serial", "stdio", "--help"], None),
    (["-V"], None),
])
def test_named_options(argv: list[str], named: list[tuple[str, tuple[str, ...]]] | None) -> None:
    got = named_options(argv)
    if named is None:
        assert got is None
    else:
        assert got is not None
        assert [(n, set(w)) for n, w in got] == [(n, set(w)) for n, w in named]


ENTRIES: list[entrypoints.Entry] = [("blk", "p_blk", ""), ("serial", "p_serial", ""),
                                    ("timer", "p_timer", "")]
CLAIMS = {"p_blk": {"-drive", "-device virtio-blk-device"}, "p_serial": {"-serial"}}


@pytest.mark.parametrize(("argv", "loaded"), [
    (["-kernel", "k", "-serial", "stdio"], {"serial", "timer"}),
    (["-kernel", "k"], {"timer"}),
    (["-device", "virtio-blk-device,drive=d0"], {"blk", "timer"}),
    (["-drive", "id=d0", "-serial", "stdio"], {"blk", "serial", "timer"}),
    (["-device", "nothing-declares-this"], {"blk", "serial", "timer"}),
    (["-nosuchoption"], {"blk", "serial", "timer"}),
])
def test_needed(argv: list[str], loaded: set[str]) -> None:
    """Undeclared plugins (timer) always; declared ones when named; all of them when the
    run names what nobody declares."""
    named = named_options(argv)
    assert named is not None
    assert {e[0] for e in _needed(ENTRIES, named, {"-kernel"}, CLAIMS)} == loaded
