"""A full session with the independent client qemu.qmp against a running VM."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient
from qmp_vm import VmProcess, build_loop_guest, loop_guest_args

from stratovmm import __version__


@pytest.fixture
def vm(kvm_available: None, tmp_path: Path) -> Iterator[VmProcess]:
    process = VmProcess(loop_guest_args(build_loop_guest(tmp_path), "-name", "qemu-qmp"))
    assert process.wait_stdout("READY"), process.stderr
    yield process
    process.close()


async def next_event(listener: EventListener, name: str) -> Any:
    """The next event called ``name`` (others are skipped)."""
    while True:
        event = await asyncio.wait_for(listener.get(), 10)
        if event["event"] == name:
            return event


async def session(socket_path: str, fd_file: Path, image: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    qmp = QMPClient("stratovmm-test")
    await qmp.connect(socket_path)          # reads the greeting, sends qmp_capabilities
    assert qmp.greeting is not None
    seen["package"] = qmp.greeting.QMP.version["package"]
    seen["status"] = await qmp.execute("query-status")
    seen["name"] = await qmp.execute("query-name")
    with qmp.listener() as listener:
        await qmp.execute("stop")
        seen["stop_event"] = await next_event(listener, "STOP")
        seen["paused"] = await qmp.execute("query-status")
        await qmp.execute("cont")
        seen["resume_event"] = await next_event(listener, "RESUME")
    try:
        await qmp.execute("no-such-command")
    except ExecuteError as exc:
        seen["unknown"] = exc.error_class
    with open(fd_file, "w") as f:
        qmp.send_fd_scm(f.fileno())
        seen["getfd"] = await qmp.execute("getfd", {"fdname": "fd-one"})
    seen["closefd"] = await qmp.execute("closefd", {"fdname": "fd-one"})
    seen["blockdev_add"] = await qmp.execute("blockdev-add", {
        "node-name": "drive-1", "file": {"driver": "file", "filename": str(image)}})
    seen["device_add"] = await qmp.execute("device_add", {
        "driver": "virtio-blk-mmio", "id": "drive-1", "addr": "0x1"})
    with qmp.listener() as listener:
        seen["device_del"] = await qmp.execute("device_del", {"id": "drive-1"})
        seen["deleted_event"] = await next_event(listener, "DEVICE_DELETED")
    with qmp.listener() as listener:
        seen["quit"] = await qmp.execute("quit")
        seen["shutdown_event"] = await next_event(listener, "SHUTDOWN")
    # The server hangs up after quit; qemu.qmp reports that EOF from disconnect() when its
    # reader saw it first (QEMU's own python/qemu/machine ignores it the same way).
    with contextlib.suppress(EOFError):
        await qmp.disconnect()
    return seen


def test_qemu_qmp_session(vm: VmProcess, tmp_path: Path) -> None:
    """qemu.qmp negotiates, queries, stops and continues with STOP/RESUME, passes an fd
    with getfd, sees CommandNotFound, hot-replaces a drive (blockdev-add, device_add,
    device_del with DEVICE_DELETED), and quits with SHUTDOWN; the VMM exits 0."""
    image = tmp_path / "hot.img"
    image.write_bytes(bytes(1 << 20))
    seen = asyncio.run(session(vm.socket_path, tmp_path / "fd-file", image))
    assert seen["package"] == f"StratoVMM-{__version__}"
    assert seen["status"] == {"running": True, "singlestep": False, "status": "running"}
    assert seen["name"] == {"name": "qemu-qmp"}
    assert seen["paused"]["status"] == "paused"
    assert {"seconds", "microseconds"} <= set(seen["stop_event"]["timestamp"])
    assert seen["resume_event"]["event"] == "RESUME"
    assert seen["unknown"] == "CommandNotFound"
    assert seen["getfd"] == {} and seen["closefd"] == {}
    assert seen["blockdev_add"] == {} and seen["device_add"] == {} and seen["device_del"] == {}
    assert seen["deleted_event"]["data"] == {"device": "drive-1",
                                             "path": "drive-1"}
    assert seen["quit"] == {}
    assert seen["shutdown_event"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert vm.wait() == 0
    assert not os.path.exists(vm.socket_path)
