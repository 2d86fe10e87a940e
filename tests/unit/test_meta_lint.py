"""The style rules the project holds itself to: ``ruff`` clean everywhere and ``mypy
--strict`` clean for the core, every shipped plugin and the guest builder (the ``dev`` extra
installs both; CI does).  Skipped when the tools are not installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINTED = ("core", "plugins", "guest", "tests", "examples", "bench", "tools")


def tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install '.[dev]')")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_ruff_is_clean() -> None:
    """ruff check finds nothing in the source, tests, examples, benchmarks and tools."""
    tool("ruff")
    proc = run("ruff", "check", "--no-cache", *LINTED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (pyproject's settings) passes for the core, each plugin package and the
    guest builder."""
    tool("mypy")
    plugins = sorted(str(p.parent) for p in REPO.glob("plugins/*/stratovmm_*/plugin.py"))
    assert len(plugins) == 7
    for target in (["-p", "stratovmm"], [*plugins, "guest/stratovmm_guest"]):
        proc = run("mypy", "--cache-dir", "/dev/null", *target)
        assert proc.returncode == 0, proc.stdout + proc.stderr
