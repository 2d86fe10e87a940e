"""The Linux tier's one rerun after a guest fault (tests/hostfault.py), run by pytest itself
on small test files whose module fixture stands in for a boot; and the fault lines
``host_fault`` recognises."""

from __future__ import annotations

import pytest
from limitedrun import run_limited

from stratovmm.testing.guest import host_fault

pytest_plugins = ["pytester"]

CONFTEST = """
from hostfault import (pytest_report_teststatus, pytest_runtest_makereport,
                       pytest_runtest_protocol, pytest_terminal_summary)
"""

# A module fixture that "boots" (counted in a file) and whose console shows a fault on the
# boots listed in FAULTY; test_console fails when its boot's console shows one.
TESTS = """
import pathlib
import pytest

COUNT = pathlib.Path(__file__).with_name("boots")
FAULTY = {faulty}


class Boot:
    def __init__(self, n):
        self.n = n
        self.stdout = "GUEST-READY\\nSegmentation fault\\n" if n in FAULTY else "GUEST-READY\\n"


@pytest.fixture(scope="module")
def boot():
    n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1
    COUNT.write_text(str(n))
    return Boot(n)


@pytest.mark.{marker}
def test_before(boot):
    assert boot.n >= 1


@pytest.mark.{marker}
def test_console(boot):
    assert {check}


@pytest.mark.{marker}
def test_after(boot):
    pass
"""

FAULT_FREE = '"Segmentation" not in boot.stdout'


def run(pytester: pytest.Pytester, faulty: set[int], check: str = FAULT_FREE,
        marker: str = "linux") -> tuple[dict[str, int], int, str]:
    """Run the file above; its outcome counts, how many boots it made, its output."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    linux: boots Linux\n")
    pytester.makepyfile(test_guest=TESTS.format(faulty=faulty or "set()", check=check,
                                                marker=marker))
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:benchmark")
    boots = int((pytester.path / "boots").read_text())
    return result.parseoutcomes(), boots, result.stdout.str()


def test_a_fault_once_reruns_from_a_fresh_boot(pytester: pytest.Pytester) -> None:
    """The first boot faults: test_console reruns on a second boot, which the tests after it
    use; the summary names the test and the guest's fault line."""
    outcomes, boots, output = run(pytester, {1})
    assert outcomes == {"passed": 3, "rerun": 1}
    assert boots == 2
    assert "test_guest.py::test_console (call): Segmentation fault" in output


def test_a_fault_twice_fails(pytester: pytest.Pytester) -> None:
    """One rerun only: a second faulted boot fails the test."""
    outcomes, boots, _ = run(pytester, {1, 2})
    assert outcomes == {"passed": 2, "failed": 1, "rerun": 1}
    assert boots == 2


def test_a_failure_without_a_fault_is_not_rerun(pytester: pytest.Pytester) -> None:
    """A failure whose report and console show no fault fails at once, on the one boot."""
    outcomes, boots, _ = run(pytester, set(), check="boot.n == 99")
    assert outcomes == {"passed": 2, "failed": 1}
    assert boots == 1


def test_only_the_linux_tier_reruns(pytester: pytest.Pytester) -> None:
    """A test without the linux marker is never rerun, fault or not."""
    outcomes, boots, _ = run(pytester, {1}, marker="kvm")
    assert outcomes == {"passed": 2, "failed": 1}
    assert boots == 1


@pytest.mark.parametrize("line", [
    "Segmentation fault",
    "/init: line 12: Illegal instruction",
    "Bus error (core dumped)",
    "[   17.52] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00007f00",
    "[    9.10] md5sum[71]: segfault at 0 ip 0000000000401000 sp 00007ffc error 4",
    "GUEST-CMD-END rc=139",
    "HP-PING-RC=139",
])
def test_fault_lines_are_recognised(line: str) -> None:
    assert host_fault(f"GUEST-READY\n{line}\nGUEST-HALT\n") == line


@pytest.mark.parametrize("line", [
    "GUEST-CMD-END rc=1",
    "PING-RC=0",
    "rc=1390",
    "Fatal Python error: Segmentation fault",
    "the VMM ended (rc -11)",
])
def test_other_lines_are_not_faults(line: str) -> None:
    assert host_fault(f"GUEST-READY\n{line}\n") is None


# A module fixture whose "boot" hangs on the boots listed in HANGING (as a guest that never
# answers would), under the time limit of tests/timelimit.py.
HANG_CONFTEST = """
from hostfault import (pytest_report_teststatus, pytest_runtest_makereport,
                       pytest_runtest_protocol, pytest_terminal_summary)
"""

HANGS = """
import pathlib
import time

import pytest

COUNT = pathlib.Path(__file__).with_name("boots")
HANGING = {hanging}


@pytest.fixture(scope="module")
def boot():
    n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1
    COUNT.write_text(str(n))
    if n in HANGING:
        time.sleep(60)
    return n


@pytest.mark.linux
def test_first(boot):
    pass


@pytest.mark.linux
def test_second(boot):
    pass
"""


def run_hangs(pytester: pytest.Pytester, hanging: set[int]) -> tuple[pytest.RunResult, int]:
    """Run the file above in a fresh interpreter with a 0.5 s limit per phase."""
    result = run_limited(pytester, "0.5", conftest=HANG_CONFTEST,
                         ini="[pytest]\nmarkers =\n    linux: boots Linux\n",
                         test_guest=HANGS.format(hanging=hanging))
    return result, int((pytester.path / "boots").read_text())


def test_a_hang_once_reruns_and_prints_what_the_watchdog_saw(pytester: pytest.Pytester
                                                              ) -> None:
    """The first boot hangs past the limit: the test reruns on a second boot (which the next
    test uses); the summary names the limit and prints the first attempt's stacks."""
    result, boots = run_hangs(pytester, {1})
    assert result.parseoutcomes() == {"passed": 2, "rerun": 1}
    assert boots == 2
    out = result.stdout.str()
    assert ("test_guest.py::test_first (setup): watchdog: the setup phase ran past its limit"
            " of 0.5 s") in out
    assert "=== watchdog: test_guest.py::test_first (setup) still running" in out
    assert "in boot" in out                         # the hung fixture's line in the stack


def test_hangs_get_one_rerun_per_run(pytester: pytest.Pytester) -> None:
    """Boots 1 and 2 hang: the rerun is spent on the first, so the second hang fails the
    test, and the next test, given a fixture that already failed, is not rerun again."""
    result, boots = run_hangs(pytester, {1, 2})
    assert result.parseoutcomes() == {"errors": 2, "rerun": 1}
    assert boots == 2
