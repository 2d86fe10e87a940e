"""The plugin contract from outside: a third-party plugin package (``sample_plugin/``),
installed into a fresh venv next to the core, adds an option, a JSON key and a device
with no change to the core; and without ``stratovmm-serial`` installed, ``-serial`` is
an unknown option.

One venv is built per session (core + sample plugin, no serial plugin): creating it and
compiling the core's cffi modules takes a minute or so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parent / "sample_plugin"
INSTALL_TIMEOUT = 900

# Reads the sample device's port (0x5a0), then resets through the i8042.
READ_SAMPLE_PORT = """
    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
    .text
    .code32
    .globl _start
_start:
    mov $0x5a0, %dx
    inb %dx, %al
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
"""


@dataclass
class Venv:
    """A virtual environment with the core and the sample plugin installed."""

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


def _copy_source(destination: Path) -> Path:
    """The core's source tree without build products, VCS data, tests or plugins (a copy, so
    the build writes nothing into the working tree)."""
    target = destination / "stratovmm"
    target.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "core", target / "core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.pyc",
                                                  "_kvm.c", "*.egg-info"))
    return target


PROBE = ("import importlib.util as u, json; "
         "print(json.dumps([getattr(u.find_spec(m), 'origin', None) for m in "
         "('stratovmm', 'stratovmm_sample', 'stratovmm_serial')]))")


def find_modules(python: str | Path) -> list[str | None]:
    """Where ``python`` finds the core, the sample plugin and the serial plugin (or None)."""
    proc = subprocess.run([str(python), "-I", "-c", PROBE], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    found: list[str | None] = json.loads(proc.stdout)
    return found


def base_python() -> str:
    """The interpreter the test's venv (if any) was made from."""
    return str(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(scope="session")
def contract_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv holding the core (built from a copy of this tree) and the sample plugin,
    and not stratovmm-serial.  The base interpreter's site-packages are visible (for the
    core's ordinary dependencies) unless they hold the core or a plugin themselves."""
    root = tmp_path_factory.mktemp("contract")
    source = _copy_source(root)
    sample = root / "sample_plugin"
    shutil.copytree(SAMPLE, sample, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                  "build"))
    env = Venv(root / "venv")
    clean_base = find_modules(base_python()) == [None, None, None]
    venv.EnvBuilder(system_site_packages=clean_base, with_pip=True, clear=True).create(env.path)
    proc = env.run(str(env.python), "-m", "pip", "install", "--no-input", "--quiet",
                   str(source), str(sample), timeout=INSTALL_TIMEOUT)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return env


def test_plugins_come_from_the_venv_only(contract_venv: Venv) -> None:
    """The core and the sample plugin come from the venv's own site-packages; no serial."""
    core, sample, serial = find_modules(contract_venv.python)
    assert core is not None and core.startswith(str(contract_venv.path)), core
    assert sample is not None and sample.startswith(str(contract_venv.path)), sample
    assert serial is None


def test_help_lists_the_sample_option(contract_venv: Venv) -> None:
    """--help lists the sample plugin's -sample under its name, and no -serial."""
    proc = contract_venv.stratovmm("--help")
    assert proc.returncode == 0, proc.stderr
    assert "From plugin sample:" in proc.stdout
    assert "-sample id=ID[,level=N]" in proc.stdout
    assert "From plugin serial:" not in proc.stdout
    assert "\n  -serial " not in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-sample", "id=s0,level=999"], "-sample level: 999 is above the maximum 255"),
    (["-sample", "id=s0,colour=red"], "-sample: unknown key 'colour' (known: id, level)"),
    (["-sample", "level=1"], "-sample: missing id="),
])
def test_sample_option_is_validated(contract_venv: Venv, tmp_path: Path, args: list[str],
                                    message: str) -> None:
    """-sample is parsed by the core, checked by the plugin's schema; errors name it."""
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF")
    proc = contract_venv.stratovmm("-kernel", str(kernel), *args)
    assert proc.returncode == 2
    assert proc.stderr == f"stratovmm: {message}\n"


def test_sample_json_key_is_validated(contract_venv: Venv, tmp_path: Path) -> None:
    """The plugin's JSON key is part of the assembled schema: a wrong value names it."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": "/k"},
                                  "sample": {"sample_id": "s0", "level": "high"}}))
    proc = contract_venv.stratovmm("-config", str(config))
    assert proc.returncode == 2
    assert proc.stderr == (f"stratovmm: config file {config}: sample.level: expected an"
                           ' integer, got "high"\n')


def test_serial_is_unknown_without_its_plugin(contract_venv: Venv, tmp_path: Path) -> None:
    """Without stratovmm-serial, -serial is an unknown option: one line, exit 2."""
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF")
    proc = contract_venv.stratovmm("-serial", "stdio", "-kernel", str(kernel))
    assert proc.returncode == 2
    assert proc.stderr == ("stratovmm: unknown option '-serial' (see --help for the options of"
                           " the installed plugins)\n")
    assert proc.stdout == ""


def test_serial_json_key_is_unknown_without_its_plugin(contract_venv: Venv,
                                                       tmp_path: Path) -> None:
    """Without the serial plugin the JSON key "serial" is unknown too."""
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": "/k"},
                                  "serial": {"stdio": True}}))
    proc = contract_venv.stratovmm("-config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"stratovmm: config file {config}: unknown key 'serial'")


def test_sample_device_is_created_and_reached_by_the_guest(
        contract_venv: Venv, kvm_available: None, tmp_path: Path) -> None:
    """JSON "sample" + -sample (which wins) build the device, and the guest reads its port."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    source = tmp_path / "guest.S"
    source.write_text(READ_SAMPLE_PORT)
    kernel = tmp_path / "guest.elf"
    build = subprocess.run([gcc, "-m32", "-nostdlib", "-static", "-no-pie",
                            "-Wl,-Ttext=0x100000", "-Wl,--build-id=none", "-o", str(kernel),
                            str(source)], capture_output=True, text=True, timeout=60)
    if build.returncode != 0:
        pytest.skip(f"gcc cannot build a 32-bit guest: {build.stderr.strip()}")
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                  "sample": {"sample_id": "s0", "level": 3}}))
    proc = contract_venv.stratovmm("-config", str(config), "-sample", "id=s0,level=7",
                                   env={"STRATOVMM_LOG_LEVEL": "info"})
    assert proc.returncode == 0, proc.stderr
    assert "sample s0: guest read level 7" in proc.stderr, proc.stderr
