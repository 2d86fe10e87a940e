"""What a first build shows while it runs: which stage, how long each took, how far make is.

A first ``stratovmm-guest build`` spends minutes extracting and compiling the
kernel with its output going to a log file, so without these lines it looks
hung.  ``stage`` announces a stage and its elapsed time when it ends;
``KbuildProgress`` reads Kbuild's quiet output line by line (``  CC      init/main.o``,
``  AS      arch/x86/entry/entry_64.o``, ``  LD      vmlinux.o`` ...), counts the
objects compiled and reports at most once every ``INTERVAL`` seconds, never once
per line.  Kbuild announces no total, so the count is shown with the elapsed
time and the step make is on, not as a percentage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from stratovmm_guest.common import log

INTERVAL = 5.0
# Kbuild's quiet command lines: two spaces, the command padded to 8 columns, the target.
# "CC [M]" marks a module object.  Objects are what CC and AS make (.o); CC also writes
# a few assembler listings (.s) for generated headers, which are not counted.
_STEP = re.compile(r"^  ([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S.*?)\s*$")
_OBJECT_COMMANDS = frozenset({"CC", "CC [M]", "AS", "AS [M]"})

Clock = Callable[[], float]


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: the coarsest form that still reads exactly."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@contextmanager
def stage(name: str, number: int, count: int, clock: Clock = time.monotonic) -> Iterator[None]:
    """Log ``stage N/M: NAME`` now and ``NAME: done in ...`` when the block ends normally
    (a failure is reported by the BuildError that ends the build)."""
    log(f"stage {number}/{count}: {name}")
    start = clock()
    yield
    log(f"{name}: done in {duration(clock() - start)}")


class KbuildProgress:
    """Counts the objects a Kbuild ``make`` reports compiling; ``feed`` it every output line.

    ``report`` gets one line at most every ``interval`` seconds of ``clock``, the first
    ``interval`` seconds after construction.
    """

    def __init__(self, report: Callable[[str], None], clock: Clock = time.monotonic,
                 interval: float = INTERVAL) -> None:
        self.objects = 0
        self.step = ""
        self._report = report
        self._clock = clock
        self._interval = interval
        self._start = clock()
        self._next = self._start + interval

    def feed(self, line: str) -> None:
        """Take one line of make's output (compiler warnings and the like are skipped)."""
        match = _STEP.match(line.rstrip("\n"))
        if match:
            command, target = match.groups()
            self.step = f"{command} {target}"
            if command in _OBJECT_COMMANDS and target.endswith(".o"):
                self.objects += 1
        now = self._clock()
        if now >= self._next:
            self._report(self.status(now))
            self._next = now + self._interval

    def status(self, now: float | None = None) -> str:
        """``kernel: 812 objects compiled, 6 min 10 s (CC fs/ext4/inode.o)``."""
        elapsed = (self._clock() if now is None else now) - self._start
        plural = "" if self.objects == 1 else "s"
        step = f" ({self.step})" if self.step else ""
        return f"kernel: {self.objects} object{plural} compiled, {duration(elapsed)}{step}"

    def summary(self) -> str:
        """``kernel: make compiled 1841 objects in 21 min 40 s``, for when make has ended."""
        plural = "" if self.objects == 1 else "s"
        elapsed = duration(self._clock() - self._start)
        return f"kernel: make compiled {self.objects} object{plural} in {elapsed}"
