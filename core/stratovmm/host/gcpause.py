"""No cyclic garbage collection while the VMM starts.

Start-up allocates tens of thousands of objects (modules, classes, functions)
and frees almost none of them, so every collection the allocation counter
triggers walks a growing heap for nothing: about 8 % of the CPU time from exec
to a built VM.  The ``stratovmm`` command (``stratovmm.__main__``) pauses the
collector before it imports the CLI; ``resume()`` turns it back on when
``stratovmm.cli.main`` returns, and the runner resumes it earlier, once the VM
is built and about to run, with ``freeze=True``: what start-up made lives as
long as the VM, and collecting it for the first time cost 6-10 ms (a
second-generation collection walking every object of start-up) just as the
vCPUs began, holding the GIL a vCPU's first port write waits for.
``gc.freeze`` moves those objects where no collection looks again.  Only a
collector that was on when the pause began is turned back on (and only then is
anything frozen), so a host program that runs with it off is left as it was.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Pause the collector until ``resume()`` (no effect if it is off)."""
    global _paused
    _paused = _paused or gc.isenabled()
    gc.disable()


def resume(freeze: bool = False) -> None:
    """Turn the collector back on if a pause turned it off; with ``freeze``, first move
    every object tracked so far to the permanent generation (``gc.freeze``)."""
    global _paused
    if _paused:
        _paused = False
        if freeze:
            gc.freeze()
        gc.enable()
