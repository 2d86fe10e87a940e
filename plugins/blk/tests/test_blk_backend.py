"""Opening a drive's image: O_DIRECT by default as StratoVirt v0.3 (falling back to the page
cache only where the file system refuses it and direct was not asked for), regular files
and block devices only, and never a blocking open."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from stratovmm_blk import backend as backend_mod
from stratovmm_blk.backend import BlockBackend

from stratovmm.api import ConfigError


def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 512))
    return str(path)


def test_direct_by_default(tmp_path: Path) -> None:
    """direct absent (None): the image is opened O_DIRECT, like -drive direct=on, and the
    fd is blocking again after the open."""
    backend = BlockBackend(image(tmp_path), direct=None)
    try:
        flags = fcntl.fcntl(backend.fd, fcntl.F_GETFL)
        assert backend.direct and flags & os.O_DIRECT and not flags & os.O_NONBLOCK
        assert backend.size == 64 * 512
    finally:
        backend.close()


@pytest.fixture
def no_direct_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT at open time (EINVAL), as some FUSE ones do."""
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(backend_mod.os, "open", refusing_open)


@pytest.mark.usefixtures("no_direct_io")
def test_default_falls_back_to_the_page_cache(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """direct by default: where O_DIRECT is refused, the page cache is used, with a
    warning naming the option and the file."""
    path = image(tmp_path)
    with caplog.at_level(logging.WARNING):
        backend = BlockBackend(path, direct=None, option="blockdev-add file.filename")
    try:
        assert not backend.direct
    finally:
        backend.close()
    assert f"blockdev-add file.filename: {path}: the file system refuses O_DIRECT" in caplog.text


@pytest.mark.usefixtures("no_direct_io")
def test_explicit_direct_is_not_quietly_dropped(tmp_path: Path) -> None:
    """direct=on asked for: the refusal is an error naming the option."""
    path = image(tmp_path)
    with pytest.raises(ConfigError, match=f"-drive file: {path}: Invalid argument"):
        BlockBackend(path, direct=True)


@pytest.mark.parametrize("read_only", [True, False])
def test_fifo_is_refused_without_blocking(tmp_path: Path, read_only: bool) -> None:
    """A FIFO with no writer (which a read-only open would wait for) is refused at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"{fifo} is not a regular file or a block device"):
        BlockBackend(str(fifo), read_only=read_only, direct=None)


def test_character_device_and_directory_are_refused(tmp_path: Path) -> None:
    """/dev/null and a directory are no disks; each error names the path."""
    with pytest.raises(ConfigError, match="/dev/null is not a regular file or a block device"):
        BlockBackend("/dev/null", read_only=True)
    with pytest.raises(ConfigError, match=f"{tmp_path} is a directory"):
        BlockBackend(str(tmp_path), read_only=True)
