"""The request pumps of ``bench/pump.py`` (the freestanding guest in ``bench/pump/``) run on
StratoVMM and, with the same binary and command lines, on QEMU -M microvm, and do what they
say: small counts here, checked from both sides — the guest's report (counts, statuses,
data it read, frame order and content) and the host's view (the image after writes, the
frames the tap received)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import pump  # noqa: E402
import pumpguest  # noqa: E402
import pumpnet  # noqa: E402
import pumprun  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
VMMS = ["stratovmm", pytest.param("qemu", marks=pytest.mark.skipif(
    QEMU is None, reason="qemu-system-x86_64 not installed"))]
IMAGE = 8 << 20
ZERO = ("errors", "badlen", "mismatches", "spurious", "bad_used_idx", "other", "misordered",
        "corrupt")


@pytest.fixture(scope="module")
def elf(kvm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pump guest, built with gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return pumpguest.build(tmp_path_factory.mktemp("pump"))


def boot(vmm: str, job: pump.Job, count: int, elf: Path, image: Path,
         on_go: Callable[[int], None] | None = None) -> dict[str, str]:
    """One pump run of ``job`` on ``vmm`` (the bench's command line); the guest's report."""
    cmd = pump.commands(job, elf, job.append(count, 16), image)[vmm]
    run = pumprun.run_pump(cmd, timeout=120, on_go=on_go, pinned=False)
    assert run.problem is None and run.report is not None, run.output
    assert run.returncode == 0, run.output
    report = run.report
    assert int(report["completed"]) == count, report
    for key in ZERO:
        assert report.get(key, "0") == "0", (key, report)
    return report


@pytest.mark.parametrize("vmm", VMMS)
@pytest.mark.parametrize("name,count", [("blk-randread", 300), ("blk-seqread", 20)])
def test_blk_reads_return_the_image(vmm: str, name: str, count: int, elf: Path,
                                    tmp_path: Path) -> None:
    """Random 4 KiB and sequential 1 MiB reads (past the end of the image: they wrap) bring
    back the host's pattern: the guest checked every sampled sector and its checksum is
    the sum over exactly the blocks the host expects it to read."""
    job = pump.JOBS[name]
    image = tmp_path / "image.raw"
    pumpguest.make_image(image, IMAGE)
    report = boot(vmm, job, count, elf, image)
    offsets = pumpguest.checked_offsets(job.bs)
    assert int(report["orig"]) == count * len(offsets) and report["stamped"] == "0"
    assert int(report["csum"]) == pumpguest.expected_read_csum(
        job.job, count, job.bs, IMAGE // pumpguest.SECTOR)


@pytest.mark.parametrize("vmm", VMMS)
@pytest.mark.parametrize("name,count", [("blk-randwrite", 300), ("blk-seqwrite", 20)])
def test_blk_writes_land_in_the_image(vmm: str, name: str, count: int, elf: Path,
                                      tmp_path: Path) -> None:
    """After random 4 KiB and sequential 1 MiB writes the image holds the guest's stamp in
    every sampled sector of every block it wrote, zeros in the other sectors of those
    blocks (its buffers were zeroed), and the original pattern everywhere else."""
    job = pump.JOBS[name]
    image = tmp_path / "image.raw"
    pumpguest.make_image(image, IMAGE)
    boot(vmm, job, count, elf, image)
    assert pumpguest.check_written(image, job.job, count, job.bs) == []


@pytest.mark.parametrize("vmm", VMMS)
@pytest.mark.parametrize("name,value", [("exit-pio", None), ("exit-mmio", 0),
                                        ("exit-mmioreg", 0x74726976),
                                        ("exit-mmiostatus", 0)])
def test_exit_pump_counts_its_exits(vmm: str, name: str, value: int | None, elf: Path,
                                    tmp_path: Path) -> None:
    """The exit loops run to their count; an unassigned address reads 0, a virtio-mmio
    MagicValue reads "virt" and the InterruptStatus of a device never started 0 (both
    answered by StratoVMM's C run loop)."""
    report = boot(vmm, pump.JOBS[name], 2000, elf, tmp_path / "unused")
    if value is not None:
        assert int(report["value"], 16) == value


# -- net: a tap in a network namespace --------------------------------------------------------

# Captures COUNT frames of EtherType 0x88B5 on the tap and compares each with the pump's
# frame number n (same source MAC as the first one); prints "ok" or the first difference.
CAPTURE = textwrap.dedent("""
    import socket, sys
    sys.path.insert(0, sys.argv[1])
    import pumpguest
    count, size = int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)   # SO_RCVBUFFORCE: keep every frame
    s.bind(("tap0", 0))
    s.settimeout(60)
    print("listening", flush=True)
    for n in range(count):
        got = s.recv(65536)
        want = pumpguest.frame(n, size, got[6:12])
        if got != want:
            print(f"frame {n}: {got[:32].hex()}... expected {want[:32].hex()}...")
            break
    else:
        print("ok")
""")


@pytest.fixture
def netns() -> Iterator[None]:
    """The bench's namespace and tap (root and ``ip`` needed)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the net pump needs root and iproute2 (a namespace and a tap)")
    pumpnet.setup()
    yield
    pumpnet.teardown()


@pytest.mark.parametrize("vmm", VMMS)
@pytest.mark.parametrize("size", [64, 1514])
def test_net_tx_frames_reach_the_tap_whole(vmm: str, size: int, elf: Path, netns: None,
                                           tmp_path: Path) -> None:
    """Every frame the guest sends reaches the tap, in order and byte for byte, and the
    tap counts exactly that many."""
    count = 300
    capture = subprocess.Popen(
        pumpnet.wrap([sys.executable, "-c", CAPTURE, str(BENCH), str(count), str(size)]),
        stdout=subprocess.PIPE, text=True)
    assert capture.stdout is not None and capture.stdout.readline().strip() == "listening"
    before = pumpnet.counters()["rx_packets"]
    boot(vmm, pump.Job("net", "tx", count, size=size), count, elf, tmp_path / "unused")
    out, _ = capture.communicate(timeout=60)
    assert out.strip() == "ok"
    assert pumpnet.counters()["rx_packets"] - before == count


@pytest.mark.parametrize("vmm", VMMS)
@pytest.mark.parametrize("size", [64, 1514])
def test_net_rx_frames_reach_the_guest_whole(vmm: str, size: int, elf: Path, netns: None,
                                             tmp_path: Path) -> None:
    """Every frame the host writes into the tap reaches the guest, in order, its content
    checked there; the sequence numbers' sum matches."""
    count = 300
    source = pumpnet.FrameSource(count, size)
    report = boot(vmm, pump.Job("net", "rx", count, size=size), count, elf,
                  tmp_path / "unused", on_go=source.go)
    assert source.finish() == count
    assert int(report["csum"]) == sum(range(count))
