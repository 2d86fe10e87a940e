"""``-D [PATH]`` and the level variables, end to end with a tiny guest."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from procvm import tiny_guest, vmm_command

pytestmark = pytest.mark.usefixtures("kvm_available")

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ \[[^\]]+\] [\w.]+: ")


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``stratovmm ARGS`` with the resetting tiny guest, level variables replaced by ``env``."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("STRATOVMM_LOG_LEVEL", "STRATOVIRT_LOG_LEVEL")}
    return subprocess.run(vmm_command("-kernel", str(tiny_guest("reset")), *args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env={**base, **env})


def test_info_level_log_file_gets_the_shutdown_line(tmp_path: Path) -> None:
    """-D PATH at info: the file has the VM's life, ending with its shutdown, one line each."""
    log = tmp_path / "vmm.log"
    proc = run(["-D", str(log)], STRATOVMM_LOG_LEVEL="info")
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert any("stratovmm.machine.microvm: VM shutting down: guest-reset" in line for line in lines)
    assert proc.stderr == ""


def test_stratovirt_variable_sets_the_level(tmp_path: Path) -> None:
    """STRATOVIRT_LOG_LEVEL=debug alone is honoured like STRATOVMM_LOG_LEVEL."""
    log = tmp_path / "vmm.log"
    assert run(["-D", str(log)], STRATOVIRT_LOG_LEVEL="debug").returncode == 0
    assert " INFO [MainThread] stratovmm.machine.microvm: VM shutting down" in log.read_text()


def test_default_level_logs_nothing_for_a_clean_run(tmp_path: Path) -> None:
    """Without a level variable only errors are logged: a clean run leaves the file empty."""
    log = tmp_path / "vmm.log"
    assert run(["-D", str(log)]).returncode == 0
    assert log.read_text() == ""


def test_log_without_path_goes_to_stderr() -> None:
    """-D without a path logs to stderr."""
    proc = run(["-D"], STRATOVMM_LOG_LEVEL="info")
    assert proc.returncode == 0
    assert "stratovmm.machine.microvm: VM shutting down: guest-reset" in proc.stderr


def test_bad_level_is_a_clear_error_before_any_vm_starts(tmp_path: Path) -> None:
    """An unknown level stops start-up with status 2 and a message naming the variable."""
    log = tmp_path / "vmm.log"
    proc = run(["-D", str(log), "-serial", "stdio"], STRATOVMM_LOG_LEVEL="loud")
    assert proc.returncode == 2
    assert proc.stderr == ("stratovmm: STRATOVMM_LOG_LEVEL: 'loud' is not one of trace, debug,"
                           " info, warn, error\n")
    assert proc.stdout == ""
