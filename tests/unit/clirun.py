"""Running ``stratovmm.cli.main`` in-process for the unit tier (imported by conftest and the
CLI tests; kept out of conftest so its name is unique on ``sys.path``)."""

from __future__ import annotations

import types
from dataclasses import dataclass

import widget_plugin


@dataclass
class CliResult:
    """What one ``stratovmm`` run returned and printed."""

    rc: int
    out: str
    err: str


def plugin_set() -> dict[str, types.ModuleType]:
    """The plugin set the unit tier runs with."""
    return {"widget": widget_plugin}
