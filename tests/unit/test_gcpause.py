"""The start-up pause of the garbage collector: the ``stratovmm`` command runs the CLI's
imports paused, the pause ends after ``main`` returns (help, errors), a resume with
``freeze`` freezes what start-up made, and a collector the host program had off is never
turned on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# runs the command's entry on --help with the collector on or off at first; prints
# whether it was on while stratovmm.cli was imported and after the entry returned
PROBE = """
import gc, io, sys, contextlib
if sys.argv[1] == "off":
    gc.disable()
seen = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "stratovmm.cli":
            seen.append(gc.isenabled())
        return None

sys.meta_path.insert(0, Watch())
from stratovmm import __main__ as entry
with contextlib.redirect_stdout(io.StringIO()):
    entry.main(["--help"])
print(seen, gc.isenabled())
"""

FREEZE = """
import gc
from stratovmm.host import gcpause
gcpause.pause()
junk = [[] for _ in range(1000)]
gcpause.resume(freeze=True)
print(gc.isenabled(), gc.get_freeze_count() >= 1000)
"""


def run(tmp_path: Path, code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    return out.stdout.strip()


def test_paused_during_imports_and_back_on_after(tmp_path: Path) -> None:
    """Off while the CLI imports, on again once main() returned."""
    assert run(tmp_path, PROBE, "on") == "[False] True"


def test_a_collector_that_was_off_stays_off(tmp_path: Path) -> None:
    """A host that runs without the collector keeps it off throughout."""
    assert run(tmp_path, PROBE, "off") == "[False] False"


def test_resume_with_freeze_freezes_what_start_up_made(tmp_path: Path) -> None:
    """The runner's resume: the objects made while paused go to the permanent
    generation, and the collector is on again."""
    assert run(tmp_path, FREEZE) == "True True"


def test_importing_the_cli_alone_leaves_the_collector_alone(tmp_path: Path) -> None:
    """A program (or a test) that imports stratovmm.cli without the command's entry
    keeps its collector as it was."""
    assert run(tmp_path, "import gc, stratovmm.cli; print(gc.isenabled())") == "True"
