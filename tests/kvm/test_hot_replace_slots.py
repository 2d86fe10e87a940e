"""Hot-replace on a running VM, numbered and answered as StratoVirt v0.3 does: cold drives
fill the blk slots from 0 (the kernel command line lists the windows in order), a cold
drive can be device_del-ed and its slot and node name reused, DEVICE_DELETED's path is
the id, device_add takes v0.3's whole argument set; blockdev-add opens block devices,
refuses FIFOs (without blocking) and caps the number of nodes; the new commands are in
query-qmp-schema.  The guest's view of the same is tests/linux/test_stratovirt_compat.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from qmp_vm import VmProcess, build_loop_guest, loop_guest_args

from stratovmm.boot import layout
from stratovmm.testing.qmp import QmpTestClient


@pytest.fixture(scope="module")
def kernel(kvm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_loop_guest(tmp_path_factory.mktemp("guest"))


def image(tmp_path: Path, name: str, size: int = 1 << 20) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(size))
    return path


@pytest.fixture
def cold_vm(kernel: Path, tmp_path: Path) -> Iterator[VmProcess]:
    """The loop guest with a root and a data drive and an rng (-api-channel added)."""
    args = loop_guest_args(kernel, "-drive", f"id=root,file={image(tmp_path, 'root.img')}",
                           "-drive", f"id=data,file={image(tmp_path, 'data.img')}",
                           "-rng", "random_file=/dev/urandom")
    vm = VmProcess(args, env={"STRATOVMM_LOG_LEVEL": "info"})
    assert vm.wait_stdout("READY"), vm.stderr
    yield vm
    vm.close()


def error(reply: dict[str, object]) -> str:
    assert "error" in reply, reply
    err = reply["error"]
    assert isinstance(err, dict)
    return f"{err['class']}: {err['desc']}"


def windows_on_cmdline(stderr: str) -> list[str]:
    line = next(line for line in stderr.splitlines() if "cmdline:" in line)
    return re.findall(r"virtio_mmio\.device=4K@(0x[0-9a-f]+):(\d+)", line)


def test_cold_drives_take_slots_0_and_1_and_can_be_replaced(cold_vm: VmProcess,
                                                            tmp_path: Path) -> None:
    """root and data are blk slots 0 and 1 (windows 0, 1; blk 2-3 and net 0-1 hold
    placeholders; the rng comes after); addr 0x0 and lun 0 (slot 1) are occupied;
    device_del of the cold data drive emits DEVICE_DELETED with path = id, frees the
    slot and the node name (blockdev-del of it succeeds once), and a new image goes in."""
    expected = [(f"{layout.virtio_mmio_window(i)[0]:#x}", str(layout.virtio_mmio_window(i)[1]))
                for i in range(7)]
    assert windows_on_cmdline(cold_vm.stderr) == expected
    hot, again = image(tmp_path, "hot.img"), image(tmp_path, "again.img")
    with cold_vm.client() as qmp:
        assert "occupied by 'root'" in error(qmp.command(
            "device_add", {"driver": "virtio-blk-mmio", "id": "x", "addr": "0x0"}))
        assert "occupied by 'data'" in error(qmp.command(
            "device_add", {"driver": "virtio-blk-mmio", "id": "x", "lun": 0}))
        assert "node 'root' already exists" in error(qmp.command("blockdev-add", {
            "node-name": "root", "file": {"driver": "file", "filename": str(hot)}}))
        assert "in use by a device" in error(qmp.command("blockdev-del", {"node-name": "root"}))
        assert qmp.command("blockdev-add", {
            "node-name": "hot", "file": {"driver": "file", "filename": str(hot), "aio": "native"},
            "cache": {"direct": True, "no-flush": False}, "read-only": False,
            "read-zeros": False, "driver": "raw", "discard": "unmap", "backing": None,
            "id": "x", "options": ""})["return"] == {}
        assert qmp.command("device_add", {
            "driver": "virtio-blk-mmio", "id": "hot", "addr": "2", "bus": "virtio-mmio-bus.0",
            "romfile": "", "share-rw": "on", "disable-modern": "off", "mq": "off",
            "vectors": "0"})["return"] == {}

        assert qmp.command("device_del", {"id": "data"})["return"] == {}
        assert qmp.wait_event("DEVICE_DELETED", 5)["data"] == {"device": "data", "path": "data"}
        assert qmp.command("blockdev-del", {"node-name": "data"})["return"] == {}
        assert "no block node 'data'" in error(qmp.command("blockdev-del",
                                                           {"node-name": "data"}))
        assert qmp.command("blockdev-add", {"node-name": "data", "file": {
            "driver": "file", "filename": str(again)}})["return"] == {}
        assert qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "data",
                                          "addr": "0x1"})["return"] == {}
        stats = qmp.command("query-stats", {"target": "device", "devices": ["data"]})
        assert stats["return"][0]["qom-path"].endswith("data")
        assert qmp.command("device_del", {"id": "root"})["return"] == {}
        assert qmp.wait_event("DEVICE_DELETED", 5)["data"]["path"] == "root"
        assert qmp.command("quit")["return"] == {}
    assert cold_vm.wait() == 0


@pytest.mark.parametrize(("addr", "message"), [
    ("1.0", "addr '1.0' is not a slot number"), ("zz", "addr 'zz' is not a slot number"),
    (1.0, "device_add: addr: expected a string or an integer, got 1.0"),
    (True, "device_add: addr: expected a string or an integer, got true"),
    ("0x4", "addr 0x4 is not a slot of this VM (slots: 0x0, 0x1, 0x2, 0x3)"),
    (-1, "addr -0x1 is not a slot of this VM"),
])
def test_bad_addr_is_a_generic_error(cold_vm: VmProcess, tmp_path: Path, addr: object,
                                     message: str) -> None:
    """An addr that is no slot number, or names no slot, is GenericError (never an
    internal error) and the node stays for a later device_add."""
    with cold_vm.client() as qmp:
        assert qmp.command("blockdev-add", {"node-name": "n", "file": {
            "driver": "file", "filename": str(image(tmp_path, "n.img"))}})["return"] == {}
        reply = qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "n",
                                           "addr": addr})
        assert reply["error"]["class"] == "GenericError", reply
        assert message in reply["error"]["desc"]
        assert "internal error" not in reply["error"]["desc"]
        assert qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "n",
                                          "addr": "0x3"})["return"] == {}


def test_schema_lists_the_v03_commands(cold_vm: VmProcess) -> None:
    """query-qmp-schema has query-cpus, query-hotpluggable-cpus, blockdev-del, netdev_del
    and device_add's v0.3 arguments; query-cpus answers one entry per vCPU."""
    with cold_vm.client() as qmp:
        schema = {e["name"]: e for e in qmp.command("query-qmp-schema")["return"]
                  if e["meta-type"] == "command"}
        assert {"query-cpus", "query-hotpluggable-cpus", "blockdev-del", "netdev_del",
                "netdev_add", "blockdev-add", "device_add", "device_del"} <= set(schema)
        assert {"lun", "romfile", "share-rw", "disable-modern", "mq", "vectors", "bus",
                "drive", "netdev", "mac"} <= set(schema["device_add"]["arg-type"]["properties"])
        assert schema["blockdev-del"]["arg-type"]["required"] == ["node-name"]
        assert {"vhostfds", "queues", "type"} <= set(
            schema["netdev_add"]["arg-type"]["properties"])
        (cpu,) = qmp.command("query-cpus")["return"]
        assert cpu["CPU"] == 0 and cpu["thread_id"] in {
            int(t) for t in os.listdir(f"/proc/{cold_vm.proc.pid}/task")}


def test_block_nodes_are_capped(kernel: Path, tmp_path: Path) -> None:
    """Issue 12: blockdev-add stops at 64 nodes (each holds a fd) with a clear error, and
    blockdev-del makes room again; the VM keeps answering."""
    shared = image(tmp_path, "shared.img")
    vm = VmProcess(loop_guest_args(kernel))
    try:
        with vm.client() as qmp:
            for n in range(64):
                reply = qmp.command("blockdev-add", {
                    "node-name": f"n{n}", "read-only": True,
                    "file": {"driver": "file", "filename": str(shared)}})
                assert reply.get("return") == {}, reply
            assert error(qmp.command("blockdev-add", {
                "node-name": "n64", "read-only": True,
                "file": {"driver": "file", "filename": str(shared)}})) == (
                "GenericError: blockdev-add: too many block nodes (at most 64); blockdev-del"
                " unused ones first")
            assert qmp.command("blockdev-del", {"node-name": "n0"})["return"] == {}
            assert qmp.command("blockdev-add", {
                "node-name": "n64", "read-only": True,
                "file": {"driver": "file", "filename": str(shared)}})["return"] == {}
            assert qmp.command("query-status")["return"]["status"] == "running"
    finally:
        vm.close()


def test_blockdev_add_refuses_what_is_not_a_file_or_block_device(kernel: Path,
                                                                 tmp_path: Path) -> None:
    """Issue 12: a FIFO (read-only, no writer) is refused at once instead of blocking the
    main loop and QMP; so are a character device and a directory; each error names the
    file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    vm = VmProcess(loop_guest_args(kernel))
    try:
        with QmpTestClient(vm.socket_path, timeout=10) as qmp:
            for path in (fifo, Path("/dev/null"), tmp_path):
                reply = qmp.command("blockdev-add", {
                    "node-name": "bad", "read-only": True,
                    "file": {"driver": "file", "filename": str(path)}})
                assert reply["error"]["class"] == "GenericError", reply
                assert str(path) in reply["error"]["desc"]
                assert re.search("is not a regular file or a block device|is a directory",
                                 reply["error"]["desc"]), reply
            assert qmp.command("query-status")["return"]["status"] == "running"
    finally:
        vm.close()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A loop block device over a 1 MiB image (root and losetup needed)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("a loop device needs root and losetup")
    backing = image(tmp_path, "loop.img")
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"losetup: {made.stderr.strip()}")
    device = made.stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], timeout=30, check=False)


def test_block_device_node_is_a_drive(kernel: Path, loop_device: str) -> None:
    """file.driver host_device on a block device node: blockdev-add, device_add,
    device_del all succeed, as with a regular file."""
    vm = VmProcess(loop_guest_args(kernel))
    try:
        with vm.client() as qmp:
            assert qmp.command("blockdev-add", {"node-name": "blk", "file": {
                "driver": "host_device", "filename": loop_device}})["return"] == {}
            assert qmp.command("device_add", {"driver": "virtio-blk-mmio", "id": "blk",
                                              "addr": "0x0"})["return"] == {}
            assert qmp.command("device_del", {"id": "blk"})["return"] == {}
            assert qmp.wait_event("DEVICE_DELETED", 5)["data"] == {"device": "blk",
                                                                   "path": "blk"}
    finally:
        vm.close()
