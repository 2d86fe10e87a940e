"""A tools.ext4 freshly built by the guest builder (its ``disks`` stage, as a newcomer's
``scripts/demo.sh`` makes it) works in the guest: fio runs through the bundled loader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from stratovmm_guest import deps
from stratovmm_guest.cli import main as guest_builder

from stratovmm.testing.guest import boot_args, run_guest


@pytest.fixture(scope="module")
def tools_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stratovmm-guest build --stages disks`` into a fresh directory.  The stage takes
    fio from the host's Debian package: when it is missing it is installed as the
    builder's ``deps`` stage does (apt-get, root); without apt-get or root the test skips."""
    missing = deps.missing_packages(deps.packages_for(["disks"]))
    if missing:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"the disks stage needs the Debian packages {' '.join(missing)}, and"
                        " apt-get is not available to root here to install them")
        deps.install(["disks"])
    out = tmp_path_factory.mktemp("guest-build")
    assert guest_builder(["build", "--stages", "disks", "--out", str(out)]) == 0
    return out / "tools.ext4"


def test_fresh_tools_image_runs_fio(guest: Path, tools_image: Path, boot_lock: None) -> None:
    """The guest mounts the new tools.ext4 as its second drive and ``run-fio --version``
    prints fio's version (it failed with 'ld-linux-x86-64.so.2: Permission denied' while
    the builder wrote the loader without its execute bits)."""
    command = "mount -o ro /dev/vda /mnt && /mnt/fio/run-fio --version"
    result = run_guest([*boot_args(guest, command, mem="512M"),
                        "-drive", f"id=tools,file={tools_image},readonly=on"])
    assert result.command_rc == 0, result.stdout[-3000:]
    assert result.command_output.strip().startswith("fio-3."), result.command_output
