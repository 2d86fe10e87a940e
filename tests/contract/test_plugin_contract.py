"""The plugin contract from outside: a third-party plugin package (``sample_plugin/``),
installed into a fresh venv next to the core, adds an option, a JSON key and a device
with no change to the core; and without ``stratovmm-serial`` installed, ``-serial`` is
an unknown option.

One venv is built per session (``contract_venv`` in conftest.py: core, sample plugin and the
example boot-timer plugin, no serial plugin): creating it and compiling the core's cffi
modules takes a minute or so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from venvtools import Venv, find_modules

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
