"""Constants the core writes down as plain Python (stable Linux ABI values that Python's own
modules do not all name) agree with the C headers, read by the same compiler that builds
the core's native modules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stratovmm import memory
from stratovmm.host.unixsock import SUN_PATH_MAX


def c_value(tmp_path: Path, include: str, expression: str) -> int:
    """``expression``'s value in a C program that includes ``include`` (compiled and run)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "probe.c"
    source.write_text(f"#include <stdio.h>\n#include {include}\n"
                      f"int main(void) {{ printf(\"%lu\\n\", (unsigned long)({expression}));"
                      " return 0; }\n")
    binary = tmp_path / "probe"
    subprocess.run([gcc, "-o", str(binary), str(source)], check=True, capture_output=True)
    return int(subprocess.run([str(binary)], check=True, capture_output=True,
                              text=True).stdout)


def test_map_noreserve_is_the_headers(tmp_path: Path) -> None:
    """``memory.MAP_NORESERVE`` (guest RAM reserves no swap) is <sys/mman.h>'s."""
    assert c_value(tmp_path, "<sys/mman.h>", "MAP_NORESERVE") == memory.MAP_NORESERVE


def test_sun_path_max_is_the_headers(tmp_path: Path) -> None:
    """``SUN_PATH_MAX`` (the longest socket path) is <sys/un.h>'s ``sun_path`` less its NUL."""
    assert c_value(tmp_path, "<sys/un.h>",
                   "sizeof(((struct sockaddr_un *)0)->sun_path) - 1") == SUN_PATH_MAX
