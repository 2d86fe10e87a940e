"""Test tiers by directory: unit/ (no KVM), kvm/ (tiny guests), linux/ (boots Linux),
contract/ (fresh venvs).  Tests run in that order, contract after kvm, so that the contract
venv (built in the background from the start of the session) is ready when they start.

The suite runs on pytest-xdist workers (``-n auto --dist loadscope`` in pyproject.toml, with
the scheduler below).  Each module is one work unit, so its tests stay on one worker and a
module-scoped guest boots once; the Linux tier is one unit, so its boots still run one at a
time on one worker (each is CPU-bound for tens of seconds on a kvm-pvm host, and their
timeouts assume that), while the other workers run the rest.  Everything a test shares
with other processes is named per process or taken under a lock file.

A Linux-tier test that fails because a guest user process was killed by a fault runs once
more from fresh fixtures (``hostfault.py``: the kvm-pvm host's flaw, reported as a rerun).
Every test phase has a time limit (``timelimit.py``): a hung test fails with its stacks and
its processes' states instead of stalling the run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import timelimit
from hostfault import (  # noqa: F401 - hooks: one rerun after a guest fault (kvm-pvm)
    pytest_report_teststatus,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    pytest_terminal_summary,
)

from stratovmm.testing.guest import guest_dir

CONTRACT_ROOT = "STRATOVMM_CONTRACT_ROOT"
MAX_WORKERS = 4

TIERS = {"unit": "unit", "kvm": "kvm", "linux": "linux", "contract": "contract"}
ORDER = {"unit": 0, "kvm": 1, "contract": 2, "linux": 3}


def pytest_configure(config: pytest.Config) -> None:
    """The process that starts the run (plain pytest, or the xdist controller) makes the one
    directory the contract venv is built in; xdist workers inherit it through the
    environment, so the venv is built once per run, not once per worker.

    The watchdog is registered as a plugin, not imported as conftest hooks, so that its
    limit covers the plugins' own tests (plugins/*/tests) too."""
    config.pluginmanager.register(timelimit, "stratovmm-timelimit")
    if hasattr(config, "workerinput"):
        return
    root = tempfile.mkdtemp(prefix="stratovmm-contract-")
    os.environ[CONTRACT_ROOT] = root

    def remove() -> None:
        os.environ.pop(CONTRACT_ROOT, None)
        shutil.rmtree(root, ignore_errors=True)

    config.add_cleanup(remove)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU this process may run on, at most ``MAX_WORKERS``
    (each Linux-tier worker boots a guest with up to 512 MiB and two vCPUs)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def work_unit(nodeid: str) -> str:
    """The unit a test is scheduled with: the whole Linux tier is one, every other module
    is one of its own."""
    module = nodeid.split("::")[0]
    return "linux" if "linux" in module.split("/") else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``loadscope`` scheduling (in collection order), with ``work_unit`` as the
    scope.  Not ``loadgroup`` markers: xdist marks a group by rewriting ``item._nodeid``,
    which pytest 9.2 no longer reads, so the groups silently vanish."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return TierScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier from the directory it lives in; run the tiers in order
    (plugin tests count as unit tests)."""
    rank: dict[int, int] = {}
    for item in items:
        parts = Path(str(item.fspath)).parts
        rank[id(item)] = 0
        for directory, marker in TIERS.items():
            if directory in parts:
                item.add_marker(getattr(pytest.mark, marker))
                rank[id(item)] = max(rank[id(item)], ORDER[marker])
    items.sort(key=lambda item: rank[id(item)])


@pytest.fixture(scope="session")
def kvm_available() -> None:
    """Skip unless /dev/kvm can be opened."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm not available")


@pytest.fixture(scope="session")
def guest(kvm_available: None) -> Path:
    """The Linux test guest directory (``$STRATOVMM_GUEST_DIR``)."""
    path = guest_dir()
    if path is None:
        pytest.skip("STRATOVMM_GUEST_DIR does not point at a guest (vmlinux, initramfs.cpio)")
    return path
