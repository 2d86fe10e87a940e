"""The one fresh venv the contract tests share.  Building it compiles the core's cffi
modules and installs packages (15 s to a minute), so it starts in a background thread as
soon as collection finds a contract test, and runs beside the unit and kvm tiers.

Under pytest-xdist every worker collects the contract tests, but the venv is built once per
run: the workers share ``$STRATOVMM_CONTRACT_ROOT`` (made by tests/conftest.py), the first
to take its lock file builds, and the others wait for that build and use it."""

from __future__ import annotations

import os
import venv
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from venvtools import (
    BOOT_TIMER,
    INSTALL_TIMEOUT,
    SAMPLE,
    Venv,
    base_python,
    copy_plugin,
    copy_source,
    find_modules,
)

from stratovmm.testing.guest import file_lock

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contract-venv")
_build: Future[Venv] | None = None


def build_venv(root: Path) -> Venv:
    """A fresh venv holding the core (built from a copy of this tree), the sample plugin and
    the example boot-timer plugin (with its test extra), and not stratovmm-serial.  The base
    interpreter's site-packages are visible (for the core's ordinary dependencies) unless
    they hold the core or a plugin themselves."""
    source = copy_source(root)
    sample = copy_plugin(SAMPLE, root)
    boot_timer = copy_plugin(BOOT_TIMER, root)
    env = Venv(root / "venv")
    clean_base = find_modules(base_python(), ("stratovmm", "stratovmm_sample",
                                              "stratovmm_serial", "stratovmm_boot_timer")
                              ) == [None] * 4
    venv.EnvBuilder(system_site_packages=clean_base, with_pip=True, clear=True).create(env.path)
    proc = env.run(str(env.python), "-m", "pip", "install", "--no-input", "--quiet",
                   str(source), str(sample), f"{boot_timer}[test]", timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{proc.stdout}\n{proc.stderr}")
    return env


def build_once(root: Path) -> Venv:
    """The venv in ``root``, built by whichever process sharing ``root`` gets here first; a
    failed build is reported to the others as it was, not retried."""
    built, failed = root / "built", root / "failed"
    with file_lock(root / "build.lock"):
        if failed.exists():
            raise RuntimeError(f"the contract venv build failed in another worker:\n"
                               f"{failed.read_text()}")
        if not built.exists():
            try:
                build_venv(root)
            except Exception as exc:
                failed.write_text(f"{type(exc).__name__}: {exc}")
                raise
            built.touch()
    return Venv(root / "venv")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the venv now if any selected test needs it, in the directory
    tests/conftest.py made for this run (and removes at its end)."""
    global _build
    if _build is None and any(item.get_closest_marker("contract") for item in session.items):
        _build = _pool.submit(build_once, Path(os.environ["STRATOVMM_CONTRACT_ROOT"]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for a build still running before the directory goes."""
    if _build is not None:
        _build.exception()
    _pool.shutdown()


@pytest.fixture(scope="session")
def contract_venv() -> Venv:
    """The venv built in the background (waits for it)."""
    assert _build is not None, "collection did not start the contract venv"
    return _build.result(timeout=INSTALL_TIMEOUT)


@pytest.fixture(scope="session")
def example_copy(contract_venv: Venv) -> Path:
    """The copy of examples/boot-timer the contract venv was installed from (its tests)."""
    return contract_venv.path.parent / BOOT_TIMER.name
