"""Unit-tier fixtures: a registry with the core's options and a test plugin, and ``main()``
run in-process against exactly that plugin set (whatever else is installed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import CliResult, plugin_set

from stratovmm import cli
from stratovmm import plugin as plugin_mod
from stratovmm.plugin import PluginHost
from stratovmm.registry import DeviceRegistry


@pytest.fixture
def devices() -> DeviceRegistry:
    """The core's options plus the widget plugin's device types."""
    return PluginHost(plugin_set()).register(cli.core_registry()).devices


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``stratovmm.cli.main(argv)`` with only the widget plugin installed."""
    monkeypatch.setattr(plugin_mod, "discover", lambda *_args: plugin_set())

    def run(*argv: str) -> CliResult:
        rc = cli.main(list(argv))
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config file with the given text; returns its path."""
    def write(text: str) -> Path:
        path = tmp_path / "vm.json"
        path.write_text(text)
        return path
    return write
