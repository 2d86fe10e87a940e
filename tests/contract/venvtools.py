"""A fresh virtual environment holding the core and out-of-tree plugins, for the contract
tests (the ``contract_venv`` fixture in ``conftest.py`` builds one per session).

The core is installed from a copy of this tree (so the build writes nothing into the
working tree); the plugins are installed from copies of their directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parent / "sample_plugin"
BOOT_TIMER = REPO / "examples" / "boot-timer"
INSTALL_TIMEOUT = 900
BUILD_LEFTOVERS = ("__pycache__", "*.egg-info", "build", ".mypy_cache", ".ruff_cache")


@dataclass
class Venv:
    """A virtual environment with the core and the out-of-tree plugins installed."""

    path: Path

    @property
    def python(self) -> Path:
        """Its interpreter."""
        return self.path / "bin" / "python"

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (``stratovmm`` means the venv's console script) with the venv first on
        $PATH and no inherited PYTHONPATH."""
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", "VIRTUAL_ENV", "STRATOVMM_LOG_LEVEL",
                              "STRATOVIRT_LOG_LEVEL")}
        clean["PATH"] = f"{self.path / 'bin'}{os.pathsep}{clean.get('PATH', '')}"
        clean.update(env or {})
        argv = [str(self.path / "bin" / args[0]), *args[1:]] if args[0] == "stratovmm" else list(
            args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=clean,
                              stdin=subprocess.DEVNULL, cwd=self.path)

    def stratovmm(self, *args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``stratovmm``."""
        return self.run("stratovmm", *args, env=env)


def copy_source(destination: Path) -> Path:
    """The core's source tree without build products, VCS data, tests or plugins (a copy, so
    the build writes nothing into the working tree)."""
    target = destination / "stratovmm"
    target.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "core", target / "core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.pyc",
                                                  "_*.c", "*.egg-info"))
    return target


def copy_plugin(source: Path, destination: Path) -> Path:
    """A copy of the plugin directory ``source`` under ``destination`` (same name)."""
    target = destination / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    return target


PROBE = ("import importlib.util as u, json, sys; "
         "print(json.dumps([getattr(u.find_spec(m), 'origin', None) for m in sys.argv[1:]]))")
MODULES = ("stratovmm", "stratovmm_sample", "stratovmm_serial")


def find_modules(python: str | Path, modules: tuple[str, ...] = MODULES) -> list[str | None]:
    """Where ``python`` finds each of ``modules`` (or None); by default the core, the sample
    plugin and the serial plugin."""
    proc = subprocess.run([str(python), "-I", "-c", PROBE, *modules], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found: list[str | None] = json.loads(proc.stdout)
    return found


def base_python() -> str:
    """The interpreter the test's venv (if any) was made from."""
    return str(getattr(sys, "_base_executable", sys.executable))
