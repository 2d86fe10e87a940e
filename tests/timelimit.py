"""A time limit on every test phase, so a hung test fails with a diagnosis instead of
stalling the whole run.

A CI run (normally about 17 minutes) once stopped printing after 1,010 of 1,029 tests and was
cut off at its 90-minute limit, with nothing to say which test hung or why.  With this module
a setup, call or teardown that runs past its tier's limit is interrupted (SIGALRM in the main
thread raises ``pytest.fail``, so the test's own ``finally`` blocks still kill its VMM) and
fails with, in its captured stderr, every thread's Python stack, the state of every
process the test started (each thread's state, ``wchan`` and kernel stack: a VMM stuck in
the host kernel shows there) and the end of the host's kernel log.  If the phase has still
not ended a minute after the alarm (the main thread blocked where a signal cannot reach
it), the same diagnosis goes to the real stderr and the worker process exits; pytest-xdist
reports the test as crashed and carries on with the rest on a new worker.

Limits are per phase (a Linux module's boot happens in the setup of its first test):
``LIMITS`` by tier marker, ``DEFAULT_LIMIT`` otherwise; ``STRATOVMM_TEST_TIMEOUT=SECONDS``
sets one limit for all, ``0`` turns the watchdog off.  ``tests/conftest.py`` registers this
module as a plugin.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TextIO

import pytest

LIMITS = {"linux": 600.0, "contract": 300.0}
DEFAULT_LIMIT = 120.0
GRACE = 60.0            # after the alarm, before the worker gives up on the main thread
HARD_EXIT_STATUS = 70   # EX_SOFTWARE
DIAGNOSIS = "=== watchdog: "
_OVERRUN = re.compile(r"watchdog: the \w+ phase ran past its limit of [\d.]+ s")


def overrun(text: str) -> str | None:
    """The watchdog's failure message if ``text`` (a failure report) holds one."""
    found = _OVERRUN.search(text)
    return found.group(0) if found else None


def limit_for(item: pytest.Item) -> float:
    """The phase limit for ``item`` in seconds (0: none)."""
    override = os.environ.get("STRATOVMM_TEST_TIMEOUT")
    if override is not None:
        return float(override)
    for marker, seconds in LIMITS.items():
        if item.get_closest_marker(marker) is not None:
            return seconds
    return DEFAULT_LIMIT


# -- what the diagnosis shows ---------------------------------------------------------------


def _read(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[:limit].strip()
    except OSError as exc:
        return f"<{exc.strerror}>"


def _parent_of(stat: str) -> int:
    """The ppid field of a ``/proc/PID/stat`` line (the command name may hold spaces)."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if ")" in stat:
                children.setdefault(_parent_of(stat), []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_report(pid: int) -> Iterator[str]:
    """One process: its command line, then each thread's name, state, wchan and kernel
    stack (the stack needs root; it says where a thread stuck in the kernel is)."""
    proc = Path(f"/proc/{pid}")
    cmdline = _read(proc / "cmdline").replace("\0", " ")
    yield f"process {pid}: {cmdline[:300]}"
    try:
        tasks = sorted((proc / "task").iterdir(), key=lambda p: int(p.name))
    except OSError as exc:
        yield f"  <{exc.strerror}>"
        return
    for task in tasks:
        state = next((line.split(":", 1)[1].strip() for line in
                      _read(task / "status").splitlines() if line.startswith("State:")), "?")
        yield (f"  thread {task.name} {_read(task / 'comm')!r} state={state} "
               f"wchan={_read(task / 'wchan') or '-'}")
        for line in _read(task / "stack").splitlines()[:8]:
            yield f"    {line}"


def python_stacks() -> str:
    """Every thread's Python stack, as faulthandler prints it (through a file of its own:
    written straight to a captured stream's fd, it would be overwritten by the stream's
    buffered writes)."""
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read().decode(errors="replace")


def kernel_log_tail(lines: int = 30) -> str:
    """The end of the host kernel's log (hung tasks, soft lockups, KVM's complaints), or why
    it cannot be read (``dmesg`` needs root)."""
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<dmesg: {exc}>"
    if proc.returncode != 0:
        return f"<dmesg: {proc.stderr.strip()}>"
    return "\n".join(proc.stdout.splitlines()[-lines:])


def diagnose(nodeid: str, when: str, limit: float, out: TextIO) -> None:
    """Write what the test process and its children are doing, and the end of the kernel
    log, to ``out``."""
    out.write(f"\n{DIAGNOSIS}{nodeid} ({when}) still running after {limit:g} s ===\n")
    out.write(python_stacks())
    for pid in descendants(os.getpid()):
        for line in process_report(pid):
            out.write(line + "\n")
    out.write("host kernel log, last lines:\n" + kernel_log_tail() + "\n")
    out.flush()


# -- the timer ----------------------------------------------------------------------------


class Watch:
    """One armed phase: SIGALRM after ``limit``; a thread that ends the process if the
    phase outlives the alarm by ``GRACE``; and, should that thread never get the GIL (a C
    call that holds it), faulthandler's own C thread, which ends the process a little
    later still."""

    def __init__(self, item: pytest.Item, when: str, limit: float) -> None:
        self.item, self.when, self.limit = item, when, limit
        self.done = threading.Event()
        self.started = time.monotonic()
        self.previous = signal.signal(signal.SIGALRM, self._alarm)
        self.outer = _arm(limit)                # what was left of a watch around this one
        self.backstop = threading.Thread(target=self._backstop, daemon=True,
                                         name="test-watchdog")
        self.backstop.start()

    def _alarm(self, _signum: int, _frame: object) -> None:
        diagnose(self.item.nodeid, self.when, self.limit, sys.stderr)
        pytest.fail(f"watchdog: the {self.when} phase ran past its limit of "
                    f"{self.limit:g} s (stacks and process states in captured stderr)")

    def _backstop(self) -> None:
        if self.done.wait(self.limit + GRACE):
            return
        capman = self.item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=True)      # to the real stderr, not a tmpfile
        out = sys.__stderr__ or sys.stderr
        diagnose(self.item.nodeid, self.when, self.limit + GRACE, out)
        out.write("=== watchdog: the main thread did not return; exiting ===\n")
        out.flush()
        os._exit(HARD_EXIT_STATUS)

    def stop(self) -> None:
        """Disarm; an outer watch (a pytester run inside a test) gets its alarm and its
        faulthandler exit back, for the time it had left."""
        _arm(0)
        signal.signal(signal.SIGALRM, self.previous)
        if self.outer > 0:
            _arm(max(self.outer - (time.monotonic() - self.started), 0.001))
        self.done.set()


def _arm(seconds: float) -> float:
    """SIGALRM in ``seconds`` and faulthandler's exit ``2 * GRACE`` later (0: neither);
    returns the seconds the alarm had left before."""
    faulthandler.cancel_dump_traceback_later()
    if seconds > 0:
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no fd 2 at all
            faulthandler.dump_traceback_later(seconds + 2 * GRACE, exit=True,
                                              file=sys.__stderr__)  # type: ignore[arg-type]
    return signal.setitimer(signal.ITIMER_REAL, seconds)[0]


@contextlib.contextmanager
def watched(item: pytest.Item, when: str) -> Iterator[None]:
    """Run the block under ``item``'s limit (``when`` names it in the diagnosis); also used
    by hostfault.py for the teardown before a rerun, which no pytest phase covers."""
    limit = limit_for(item)
    if limit <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    watch = Watch(item, when, limit)
    try:
        yield
    finally:
        watch.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Setup under the watchdog."""
    with watched(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test itself under the watchdog."""
    with watched(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Teardown under the watchdog."""
    with watched(item, "teardown"):
        return (yield)
