"""The guest's userland: a busybox initramfs and two ext4 disk images.

The same ``/init`` (``guest/init.sh``, protocol in its header and in
``stratovmm.testing.guest``) and ``/etc/fstab`` go into every image.  The
initramfs is *lean*: ``/bin/busybox`` and a ``/bin/sh`` symlink only, because
busybox's shell runs applets by name without their symlinks
(FEATURE_SH_STANDALONE) and, on a host that emulates guest kernel code
(kvm-pvm), unpacking each of the ~270 symlinks costs ~8 ms of boot.  The
ext4 root has every applet symlink, so absolute paths like ``/bin/ls`` work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stratovmm_guest.common import (
    BuildError,
    Stamp,
    digest,
    log,
    run,
    shipped,
    tree_digest,
    write_if_changed,
)
from stratovmm_guest.cpio import CONSOLE_NODES, gzipped, newc_archive

BUSYBOX = Path("/bin/busybox")
FIO = Path("/usr/bin/fio")
SKELETON_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
                 "etc", "mnt", "root", "lib")
# Fixed identities, E2FSPROGS_FAKE_TIME and inode mtimes of 0 make one
# staging tree always give the same image; only inode ctimes (which mke2fs
# 1.47.0 copies from the staging files) differ between stagings.
ROOTFS_UUID = "2a4b6c8d-0000-4000-8000-000000000001"
TOOLS_UUID = "2a4b6c8d-0000-4000-8000-000000000002"
HASH_SEED = "6d6b6578-7434-0000-0000-000000000000"
RUN_FIO = b"""#!/bin/sh
# fio with the libraries it was built against, through the bundled ld.so,
# so the image works whatever the guest root holds (busybox has no libc).
d=$(dirname "$0")
exec "$d/lib/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/fio.bin" "$@"
"""


def applet_paths(busybox: Path) -> list[str]:
    """Where busybox wants its applet links (``usr/bin/[`` ...), itself excluded."""
    listed = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                            check=True).stdout.split()
    return [a for a in listed if a != "bin/busybox"]


def make_staging(root: Path, busybox: Path = BUSYBOX, lean: bool = True) -> None:
    """Lay out a busybox root in ``root`` (emptied first): the tree every image starts from."""
    if not busybox.is_file():
        raise BuildError(f"{busybox} is missing: apt-get install busybox-static")
    shutil.rmtree(root, ignore_errors=True)
    for d in SKELETON_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    if lean:
        (root / "bin/sh").symlink_to("busybox")
    else:
        for link in applet_paths(busybox):
            (root / link).parent.mkdir(parents=True, exist_ok=True)
            (root / link).symlink_to("/bin/busybox")
    write_if_changed(root / "init", shipped("init.sh"), 0o755)
    write_if_changed(root / "etc/fstab", shipped("fstab"))
    write_if_changed(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    write_if_changed(root / "etc/group", b"root:x:0:\n")
    (root / "tmp").chmod(0o1777)


def build_initramfs(out: Path, work: Path) -> None:
    """The ``initramfs`` stage: ``initramfs.cpio`` and ``initramfs.cpio.gz``.

    Boot the uncompressed one on an emulating host: gunzip in the guest costs
    ~16 s there.  Cheap enough to redo every time; unchanged bytes leave the
    files untouched.
    """
    staging = work / "staging-initramfs"
    make_staging(staging)
    archive = newc_archive(staging, CONSOLE_NODES)
    for name, data in (("initramfs.cpio", archive), ("initramfs.cpio.gz", gzipped(archive))):
        changed = write_if_changed(out / name, data)
        log(f"{name}: {len(data)} bytes{'' if changed else ' (up to date)'}")


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries ``ldd`` resolves for ``binary``, the dynamic loader included."""
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words and len(words) > 2 and words[2].startswith("/"):
            libs.append(Path(words[2]))
        elif words and words[0].startswith("/"):
            libs.append(Path(words[0]))
    return libs


def make_tools_staging(root: Path, fio: Path = FIO) -> None:
    """``fio/`` with Debian's fio, all its shared libraries and a ``run-fio`` wrapper."""
    if not fio.is_file():
        raise BuildError(f"{fio} is missing: apt-get install fio")
    shutil.rmtree(root, ignore_errors=True)
    (root / "fio/lib").mkdir(parents=True)
    shutil.copyfile(fio, root / "fio/fio.bin")
    (root / "fio/fio.bin").chmod(0o755)
    for lib in shared_libraries(fio):
        shutil.copyfile(lib, root / "fio/lib" / lib.name)
    write_if_changed(root / "fio/run-fio", RUN_FIO, 0o755)


def mkext4(image: Path, tree: Path, size: str, uuid: str) -> None:
    """An ext4 image of ``tree`` without a journal (nothing to replay in a test disk).

    Built by a non-root user, files keep that user's uid in the image; the
    guest runs everything as root, so it can still use them.
    """
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    tmp = image.with_name(image.name + ".tmp")
    tmp.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-d", tree, "-L", image.stem, "-U", uuid,
         "-E", f"root_owner=0:0,hash_seed={HASH_SEED}", "-O", "^has_journal", "-b", "4096",
         tmp, size], env={"E2FSPROGS_FAKE_TIME": "1"})
    zero_ctimes(tmp, tree)
    tmp.replace(image)


def zero_ctimes(image: Path, tree: Path) -> None:
    """Set every inode's ctime in ``image`` to 0: ``mkfs.ext4 -d`` copies each file's
    ctime from the host, which ``os.utime`` itself sets to now, so without this two
    builds of one tree differ whenever a second boundary falls between them."""
    paths = ["/"] + ["/" + str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))]
    if any('"' in p or "\n" in p for p in paths):
        raise ValueError(f"{tree}: a path with a quote or newline cannot be stamped")
    script = image.with_name(image.name + ".debugfs")
    script.write_text("".join(f'set_inode_field "{p}" ctime 0\n' for p in paths))
    try:
        done = subprocess.run(["debugfs", "-w", "-f", script, image], capture_output=True,
                              text=True, check=False,
                              env={**os.environ, "E2FSPROGS_FAKE_TIME": "1"})
    finally:
        script.unlink()
    # debugfs exits 0 even when a command fails; its errors are the stderr lines
    # after the version banner
    errors = [line for line in done.stderr.splitlines() if not line.startswith("debugfs ")]
    if done.returncode != 0 or errors:
        raise BuildError(f"debugfs on {image}: {'; '.join(errors[:3]) or done.returncode}")


def build_disk(out: Path, name: str, tree: Path, size: str, uuid: str) -> None:
    """One image, rebuilt only when the tree, size or identity changed."""
    image = out / name
    stamp = Stamp(out, name)
    want = digest([tree_digest(tree), size, uuid])
    if stamp.fresh(want, [image]):
        log(f"{name}: up to date")
        return
    mkext4(image, tree, size, uuid)
    stamp.record(want)
    log(f"{name}: {size} (sparse, {image.stat().st_blocks * 512} bytes used)")


def build_disks(out: Path, work: Path) -> None:
    """The ``disks`` stage: ``rootfs.ext4`` (32 MiB) and ``tools.ext4`` (160 MiB, fio).

    rootfs: boot with ``root=/dev/vda rw init=/init`` and no initrd (copy it
    first to write to it).  tools: ``mount /dev/vdX /mnt; /mnt/fio/run-fio``;
    fio's libraries need more than 128 MiB of guest RAM to map.
    """
    rootfs = work / "staging-rootfs"
    make_staging(rootfs, lean=False)
    write_if_changed(rootfs / "etc/rootfs-marker", b"rootfs-ext4\n")
    build_disk(out, "rootfs.ext4", rootfs, "32M", ROOTFS_UUID)
    tools = work / "staging-tools"
    make_tools_staging(tools)
    build_disk(out, "tools.ext4", tools, "160M", TOOLS_UUID)
