"""pytest run in a fresh interpreter, under the suite's time limit (tests/timelimit.py), on
small test files that hang: how the tests of timelimit.py and hostfault.py drive them (kept
out of conftest so its name is unique on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]

REGISTER_TIMELIMIT = """
import timelimit


def pytest_configure(config):
    config.pluginmanager.register(timelimit, "stratovmm-timelimit")
"""


def run_limited(pytester: pytest.Pytester, limit: str, *args: str, conftest: str = "",
                ini: str = "[pytest]\n", **files: str) -> pytest.RunResult:
    """Write ``files`` (module name → source), a conftest that registers the time limit
    plus ``conftest``, and ``ini``; run pytest ``ARGS`` on them with a ``limit`` s limit.
    The suite's own test plugins are importable; no other plugin is autoloaded (a faster
    start)."""
    pytester.makeconftest(REGISTER_TIMELIMIT + conftest)
    pytester.makeini(ini)
    pytester.makepyfile(**files)
    pytester._monkeypatch.setenv("STRATOVMM_TEST_TIMEOUT", limit)
    pytester._monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    pytester._monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
