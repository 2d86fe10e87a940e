"""The per-phase time limit (tests/timelimit.py), run by pytest itself in a subprocess on
small test files that hang in the ways a real test can."""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace

import pytest
import timelimit
from limitedrun import run_limited

pytest_plugins = ["pytester"]

GRACE_1S = """
timelimit.GRACE = 1.0
"""

HANGS = """
import pathlib
import signal
import subprocess
import time

import pytest

MARK = pathlib.Path(__file__).with_name("cleaned-up")


def test_sleeps_past_the_limit():
    child = subprocess.Popen(["sleep", "300"])
    try:
        time.sleep(300)
    finally:
        child.kill()
        child.wait()
        MARK.write_text("yes")


@pytest.fixture
def slow_setup():
    time.sleep(300)


def test_setup_hangs(slow_setup):
    pass


def test_after_the_hangs():
    pass
"""

DEAF = """
import signal
import time


def test_main_thread_cannot_be_interrupted():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    time.sleep(30)


def test_after_the_crash():
    pass
"""


GIL_HELD = """
import ctypes
import signal


def test_main_thread_holds_the_gil_in_c():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    ctypes.PyDLL(None).sleep(60)            # PyDLL: the GIL stays held during the call
"""


def run(pytester: pytest.Pytester, tests: str, *args: str) -> pytest.RunResult:
    """Run ``tests`` in a fresh interpreter with a 0.5 s limit and a 1 s grace period."""
    return run_limited(pytester, "0.5", *args, conftest=GRACE_1S, test_hangs=tests)


def test_a_hung_call_or_setup_fails_with_stacks_and_cleans_up(pytester: pytest.Pytester
                                                                ) -> None:
    """Each hang fails after the limit, naming its phase; the captured stderr holds the
    Python stack of the hung line and the child process's state; the test's ``finally``
    ran (its child was killed); the next test runs and passes."""
    result = run(pytester, HANGS)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    out = result.stdout.str()
    assert "watchdog: the call phase ran past its limit of 0.5 s" in out
    assert "watchdog: the setup phase ran past its limit of 0.5 s" in out
    assert "=== watchdog: test_hangs.py::test_sleeps_past_the_limit (call)" in out
    assert 'in test_sleeps_past_the_limit' in out           # faulthandler's stack
    assert "process " in out and "sleep 300" in out and "state=S" in out
    assert "host kernel log, last lines:" in out
    assert (pytester.path / "cleaned-up").read_text() == "yes"


def test_zero_turns_the_watchdog_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STRATOVMM_TEST_TIMEOUT=0``: a watched block arms no timer and starts no thread."""
    monkeypatch.setenv("STRATOVMM_TEST_TIMEOUT", "0")
    item = SimpleNamespace(nodeid="x", get_closest_marker=lambda _name: None)
    handler, (remaining, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(
        signal.ITIMER_REAL)                     # this test's own limit, if it has one
    threads = threading.active_count()
    with timelimit.watched(item, "call"):  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGALRM) is handler
        assert signal.getitimer(signal.ITIMER_REAL)[0] <= remaining
        assert threading.active_count() == threads


def test_a_main_thread_deaf_to_the_alarm_ends_the_process(pytester: pytest.Pytester) -> None:
    """The alarm cannot reach the main thread: after the grace period the diagnosis goes to
    the real stderr and the process exits 70 instead of hanging the run."""
    result = run(pytester, DEAF)
    assert result.ret == 70
    err = result.stderr.str()
    assert "test_main_thread_cannot_be_interrupted (call) still running after 1.5 s" in err
    assert "the main thread did not return; exiting" in err


def test_under_xdist_a_crashed_worker_is_replaced_and_the_run_goes_on(
        pytester: pytest.Pytester) -> None:
    """With a worker (as in CI) the same hang is reported as that test's crash, and the test
    after it runs on a new worker."""
    result = run(pytester, DEAF, "-p", "xdist", "-n", "1")
    out = result.stdout.str()
    assert "crashed while running" in out and "test_main_thread_cannot_be_interrupted" in out
    result.assert_outcomes(passed=1, failed=1)


def test_a_c_call_holding_the_gil_still_ends_the_process(pytester: pytest.Pytester) -> None:
    """Neither the alarm nor the backstop thread can run while a C call holds the GIL;
    faulthandler's C thread ends the process (status 1) at twice the grace period after
    the limit, not after the call's 60 s."""
    result = run(pytester, GIL_HELD)
    assert result.ret == 1
    assert result.duration < 30


def test_a_watch_inside_another_gives_the_outer_its_timer_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested watch (pytest run in-process inside a test) restores the outer handler and
    the outer timer's remaining time when it ends."""
    item = SimpleNamespace(nodeid="x", get_closest_marker=lambda _name: None)
    monkeypatch.setenv("STRATOVMM_TEST_TIMEOUT", "50")
    with timelimit.watched(item, "outer"):  # type: ignore[arg-type]
        handler = signal.getsignal(signal.SIGALRM)
        monkeypatch.setenv("STRATOVMM_TEST_TIMEOUT", "5")
        with timelimit.watched(item, "inner"):  # type: ignore[arg-type]
            assert signal.getitimer(signal.ITIMER_REAL)[0] <= 5
        assert signal.getsignal(signal.SIGALRM) is handler
        assert 45 < signal.getitimer(signal.ITIMER_REAL)[0] <= 50
