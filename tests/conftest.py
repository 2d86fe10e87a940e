"""Test tiers by directory: unit/ (no KVM), kvm/ (tiny guests), linux/ (boots Linux),
contract/ (fresh venvs).  Tests run in that order, contract after kvm, so that the contract
venv (built in the background from the start of the session) is ready when they start.

The suite runs on pytest-xdist workers (``-n auto --dist loadgroup`` in pyproject.toml).  Each
module is one group, so its tests stay on one worker and a module-scoped guest boots once;
the Linux tier is one group, so its boots still run one at a time on one worker (each is
CPU-bound for tens of seconds on a kvm-pvm host, and their timeouts assume that), while the
other workers run the rest.  Everything a test shares with other processes is named per
process or taken under a lock file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from stratovmm.testing.guest import guest_dir

CONTRACT_ROOT = "STRATOVMM_CONTRACT_ROOT"
MAX_WORKERS = 4

TIERS = {"unit": "unit", "kvm": "kvm", "linux": "linux", "contract": "contract"}
ORDER = {"unit": 0, "kvm": 1, "contract": 2, "linux": 3}


def pytest_configure(config: pytest.Config) -> None:
    """The process that starts the run (plain pytest, or the xdist controller) makes the one
    directory the contract venv is built in; xdist workers inherit it through the
    environment, so the venv is built once per run, not once per worker."""
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


def pytest_itemcollected(item: pytest.Item) -> None:
    """Put each test in its xdist group as soon as it is collected: xdist reads the groups
    in its own ``pytest_collection_modifyitems``, which can run before ours."""
    linux = "linux" in Path(str(item.fspath)).parts
    item.add_marker(pytest.mark.xdist_group("linux" if linux else item.nodeid.split("::")[0]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier from the directory it lives in; run the tiers in order
    (plugin tests count as unit tests), and tests marked ``early`` before all of them: a
    long test started last would keep one xdist worker busy after the other has finished."""
    rank: dict[int, int] = {}
    for item in items:
        parts = Path(str(item.fspath)).parts
        rank[id(item)] = 0
        for directory, marker in TIERS.items():
            if directory in parts:
                item.add_marker(getattr(pytest.mark, marker))
                rank[id(item)] = max(rank[id(item)], ORDER[marker])
        if item.get_closest_marker("early"):
            rank[id(item)] = -1
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
