"""The start-up pause of the garbage collector ends where it should: after the CLI's
imports, after ``main`` returns (help, errors), and never turns on a collector that
the host program had off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# imports the CLI and runs --help with the collector on or off at first; prints whether
# it was off during the CLI's imports, after them, and after main()
PROBE = """
import gc, io, sys, contextlib
if sys.argv[1] == "off":
    gc.disable()
from stratovmm.host import gcpause
during = gc.isenabled()
import stratovmm.cli
after_import = gc.isenabled()
with contextlib.redirect_stdout(io.StringIO()):
    stratovmm.cli.main(["--help"])
print(during, after_import, gc.isenabled())
"""


def probe(tmp_path: Path, state: str) -> str:
    """The three states PROBE prints."""
    out = subprocess.run([sys.executable, "-c", PROBE, state], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    return out.stdout.strip()


def test_paused_during_imports_and_back_on_after(tmp_path: Path) -> None:
    """Off while the CLI imports, on again once imported and after main()."""
    assert probe(tmp_path, "on") == "False True True"


def test_a_collector_that_was_off_stays_off(tmp_path: Path) -> None:
    """A host that runs without the collector keeps it off throughout."""
    assert probe(tmp_path, "off") == "False False False"
