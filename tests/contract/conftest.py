"""The one fresh venv the contract tests share (building it compiles the core's cffi modules:
a minute or so, so once per session)."""

from __future__ import annotations

import venv
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


@pytest.fixture(scope="session")
def contract_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv holding the core (built from a copy of this tree), the sample plugin and
    the example boot-timer plugin (with its test extra), and not stratovmm-serial.  The base
    interpreter's site-packages are visible (for the core's ordinary dependencies) unless
    they hold the core or a plugin themselves."""
    root = tmp_path_factory.mktemp("contract")
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
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return env


@pytest.fixture(scope="session")
def example_copy(contract_venv: Venv) -> Path:
    """The copy of examples/boot-timer the contract venv was installed from (its tests)."""
    return contract_venv.path.parent / BOOT_TIMER.name
