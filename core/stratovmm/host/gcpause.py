"""No cyclic garbage collection while the VMM starts.

Start-up allocates tens of thousands of objects (modules, classes, functions)
and frees almost none of them, so every collection the allocation counter
triggers walks a growing heap for nothing: about 8 % of the CPU time from exec
to a built VM.  Importing this module pauses the collector (``stratovmm.cli``
imports it first, so its own imports run paused); ``resume()`` at the end of that
import, and again once the VM is built and about to run, turns it back on.  Only
a collector that was on when the pause began is turned back on, so a host
program that runs with it off (or a test that imports the CLI) is left as it was.
"""

from __future__ import annotations

import gc

_paused = gc.isenabled()
gc.disable()


def pause() -> None:
    """Pause the collector until ``resume()`` (no effect if it is off)."""
    global _paused
    _paused = _paused or gc.isenabled()
    gc.disable()


def resume() -> None:
    """Turn the collector back on if a pause turned it off."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()
