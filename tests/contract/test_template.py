"""``stratovmm-plugin new``: the console script of a fresh install writes a plugin whose own
tests pass from the start (unit, configuration and a tiny-guest VM with the real
``stratovmm``), and whose code is ruff and ``mypy --strict`` clean under its own
configuration."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from venvtools import Venv


@pytest.fixture(scope="module")
def generated(contract_venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stratovmm-plugin new my-dev`` run from the contract venv's console script."""
    where = tmp_path_factory.mktemp("template")
    proc = contract_venv.run("stratovmm-plugin", "new", "my-dev", "--dir", str(where))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"created {where / 'my-dev'}\n")
    return where / "my-dev"


def test_generated_plugin_has_the_standard_file_set(generated: Path) -> None:
    """Every file a StratoVMM plugin has, under the derived names."""
    for relative in ("pyproject.toml", "README.md", "stratovmm_my_dev/__init__.py",
                     "stratovmm_my_dev/plugin.py", "stratovmm_my_dev/schema.py",
                     "stratovmm_my_dev/device.py", "stratovmm_my_dev/py.typed"):
        assert (generated / relative).is_file(), relative
    assert list((generated / "tests").glob("test_*.py"))
    assert 'my-dev = "stratovmm_my_dev.plugin"' in (generated / "pyproject.toml").read_text()


def test_generated_plugin_tests_pass_from_the_start(contract_venv: Venv, generated: Path,
                                                    kvm_available: None) -> None:
    """Its tests pass in the fresh venv (plugin not installed: on PYTHONPATH), the VM test
    included."""
    proc = contract_venv.run(str(contract_venv.python), "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", str(generated / "tests"),
                             env={"PYTHONPATH": str(generated)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_generated_plugin_is_lint_and_type_clean(contract_venv: Venv, generated: Path,
                                                 tool: str) -> None:
    """ruff check and mypy --strict pass with the generated pyproject's own settings (mypy
    reads the core's types from the contract venv, where it is installed as users get it)."""
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed")
    args = (["check", "."] if tool == "ruff" else
            ["--python-executable", str(contract_venv.python), "stratovmm_my_dev", "tests"])
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=generated,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
