"""One rerun for a Linux-tier test that failed because a guest user process was killed by a
fault — the kvm-pvm host's known flaw, not the VMM's.

On this host, guest user code now and then segfaults (busybox stress loops do it under QEMU
too; bench/RESULTS.md); a CI run lost test_vsock to a segfaulting /init.  Nothing a VMM does
can prevent it, and no test should be weakened for it, so a failed Linux-tier test whose report
or guest console shows such a fault (``stratovmm.testing.guest.host_fault``) runs once more,
from fresh fixtures: everything set up for it, the module's boot included, is torn down
first.  The first attempt is reported as ``rerun`` with the fault line, so the run's summary
says what happened; a second fault, or any other failure, fails the test as usual.

A Linux-tier phase that ran past its time limit (``timelimit.py``) is rerun the same way,
once per run (``MAX_HANG_RERUNS``): a CI run once hung in the net module's setup, cause
unknown, and every wait there has a timeout.  The summary then prints the first attempt's
stacks and process states, so a hang that comes back can be diagnosed, not just retried.

The hooks are imported into ``tests/conftest.py``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator

import pytest
from _pytest.runner import runtestprotocol
from timelimit import DIAGNOSIS, overrun, watched

from stratovmm.testing.guest import host_fault

RERUN = "rerun"
MAX_HANG_RERUNS = 1
FAULT = pytest.StashKey[str]()
HANG_RERUNS = pytest.StashKey[int]()


def guest_texts(item: pytest.Item, report: pytest.TestReport) -> Iterator[str]:
    """Where a guest fault would show: the console (``stdout``) of every fixture value that
    has one (a boot's result, a running VM), the failure (its ``E`` prefixes removed), and
    the captured output."""
    for value in (getattr(item, "funcargs", None) or {}).values():
        stdout = getattr(value, "stdout", None)
        if isinstance(stdout, str):
            yield stdout
    yield re.sub(r"(?m)^E\s+", "", report.longreprtext)
    yield from (content for _, content in report.sections)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember the fault line of a failed Linux-tier test (while its fixtures still live)."""
    report = yield
    if report.failed and item.get_closest_marker("linux") is not None:
        line = rerun_reason(item, report)
        if line is not None:
            item.stash[FAULT] = line
    return report


def rerun_reason(item: pytest.Item, report: pytest.TestReport) -> str | None:
    """The guest's fault line; else the watchdog's message, while this run's budget of
    hang reruns lasts; else None."""
    line = host_fault("\n".join(guest_texts(item, report)))
    if line is not None:
        return line
    hang = overrun(report.longreprtext)
    used = item.session.stash.get(HANG_RERUNS, 0)
    if hang is None or used >= MAX_HANG_RERUNS:
        return None
    item.session.stash[HANG_RERUNS] = used + 1
    return hang


def fresh_fixtures(item: pytest.Item) -> bool:
    """Tear down everything still set up (module-scoped boots included), as at the end of
    a run, so the rerun sets it all up again.  False if a teardown failed."""
    try:
        with watched(item, "teardown before the rerun"):
            item.session._setupstate.teardown_exact(None)
    except (Exception, pytest.fail.Exception):  # a broken teardown: no rerun, not a crash
        return False
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run a Linux-tier test; after a failure with a guest fault, once more from scratch."""
    if item.get_closest_marker("linux") is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    fault = item.stash.get(FAULT, None)
    if fault is not None and fresh_fixtures(item):
        for report in reports:
            if report.failed:
                report.outcome = RERUN  # type: ignore[assignment]
                report.user_properties.append(("host_fault", fault))
                report.user_properties.extend(
                    ("diagnosis", text) for _, text in report.sections if DIAGNOSIS in text)
                item.ihook.pytest_runtest_logreport(report=report)
        del item.stash[FAULT]
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """A first attempt lost to a guest fault: ``R`` in the progress line, ``rerun`` in the
    summary counts."""
    if report.outcome == RERUN:
        return RERUN, "R", "RERUN"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name every rerun test and the guest's fault line (and, after a hang, print what
    the watchdog saw)."""
    reruns = terminalreporter.stats.get(RERUN, [])
    if not reruns:
        return
    terminalreporter.section("reruns after a guest fault or a hang (kvm-pvm host)")
    for report in reruns:
        fault = dict(report.user_properties).get("host_fault", "?")
        terminalreporter.line(f"{report.nodeid} ({report.when}): {fault}")
        for name, text in report.user_properties:
            if name == "diagnosis":
                terminalreporter.line(text)
