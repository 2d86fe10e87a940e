"""The guest builder without building a kernel: cpio writer, staging trees, config, CLI."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from stratovmm_guest import deps, images, kernel
from stratovmm_guest.cli import DEMO_CMD, main
from stratovmm_guest.common import BuildError, Stamp, shipped, shipped_patches
from stratovmm_guest.cpio import CONSOLE_NODES, DeviceNode, gzipped, newc_archive

from stratovmm.testing.guest import HOST_APPEND, cmd_arg


def read_newc(data: bytes) -> list[tuple[str, int, tuple[int, int], bytes]]:
    """Parse a newc archive back into (name, mode, (rdevmajor, rdevminor), data)."""
    entries: list[tuple[str, int, tuple[int, int], bytes]] = []
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_end = pos + 110 + namesize
        name = data[pos + 110:name_end - 1].decode()
        body = name_end + (-name_end % 4)
        content = data[body:body + filesize]
        pos = body + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            return entries
        assert fields[2] == fields[3] == fields[5] == 0, "uid, gid and mtime must be 0"
        entries.append((name, fields[1], (fields[9], fields[10]), content))


@pytest.fixture
def fake_busybox(tmp_path: Path) -> Path:
    """A stand-in for /bin/busybox whose --list-full names three applets."""
    path = tmp_path / "busybox"
    path.write_text("#!/bin/sh\necho bin/busybox bin/ls sbin/reboot 'usr/bin/['\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small staging tree: a directory, an executable, a symlink."""
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "bin/tool").write_bytes(b"abc")
    (root / "bin/tool").chmod(0o755)
    (root / "bin/link").symlink_to("tool")
    (root / "init").write_bytes(b"#!/bin/sh\n")
    return root


def test_cpio_lists_tree_and_nodes_in_order(tree: Path) -> None:
    """Parents come before children, device nodes follow, data and modes survive."""
    entries = read_newc(newc_archive(tree, CONSOLE_NODES))
    assert [e[0] for e in entries] == ["bin", "bin/link", "bin/tool", "dev", "init",
                                       "dev/console", "dev/null"]
    by_name = {e[0]: e for e in entries}
    assert by_name["bin/tool"][1] == stat.S_IFREG | 0o755
    assert by_name["bin/tool"][3] == b"abc"
    assert by_name["bin/link"][1] == stat.S_IFLNK | 0o777
    assert by_name["bin/link"][3] == b"tool"
    assert by_name["dev/console"][1] == stat.S_IFCHR | 0o600
    assert by_name["dev/console"][2] == (5, 1)


def test_cpio_is_deterministic(tree: Path) -> None:
    """Same tree, other mtimes and creation order: the same bytes, padded to 512."""
    first = newc_archive(tree, CONSOLE_NODES)
    os.utime(tree / "bin/tool", (12345, 12345))
    (tree / "init").unlink()
    (tree / "init").write_bytes(b"#!/bin/sh\n")
    second = newc_archive(tree, CONSOLE_NODES)
    assert first == second
    assert len(first) % 512 == 0
    assert gzipped(first) == gzipped(second)
    assert gzip.decompress(gzipped(first)) == first


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_cpio_tool_reads_archive(tree: Path) -> None:
    """GNU cpio lists exactly our entries (an independent reader of the format)."""
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=newc_archive(tree, CONSOLE_NODES),
                             capture_output=True, check=True).stdout.decode().split()
    assert listing == ["bin", "bin/link", "bin/tool", "dev", "init", "dev/console", "dev/null"]


def test_device_node_replaces_staged_file(tree: Path) -> None:
    """A staged dev/console file is replaced by the device node, not duplicated."""
    (tree / "dev/console").write_bytes(b"")
    names = [e[0] for e in read_newc(newc_archive(tree, CONSOLE_NODES))]
    assert names.count("dev/console") == 1


def test_device_node_parse_errors() -> None:
    """A malformed --node spec names itself and the expected form."""
    assert DeviceNode.parse("/dev/null:c:1:3:0666") == DeviceNode("dev/null", "c", 1, 3, 0o666)
    for bad in ("/dev/null:c:1:3", "/dev/null:x:1:3:0666", "/dev/null:c:one:3:0666"):
        with pytest.raises(ValueError, match="PATH:c\\|b:MAJOR:MINOR:MODE"):
            DeviceNode.parse(bad)


def test_lean_staging_tree(tmp_path: Path, fake_busybox: Path) -> None:
    """The initramfs tree has /init, /bin/busybox, /bin/sh, /etc/fstab and no applet links."""
    root = tmp_path / "staging"
    images.make_staging(root, busybox=fake_busybox, lean=True)
    assert (root / "init").read_bytes() == shipped("init.sh")
    assert os.access(root / "init", os.X_OK)
    assert (root / "bin/busybox").read_bytes() == fake_busybox.read_bytes()
    assert os.readlink(root / "bin/sh") == "busybox"
    assert (root / "etc/fstab").read_bytes() == shipped("fstab")
    assert sorted(p.name for p in (root / "bin").iterdir()) == ["busybox", "sh"]
    names = {e[0] for e in read_newc(newc_archive(root, CONSOLE_NODES))}
    assert {"init", "bin/busybox", "bin/sh", "etc/fstab", "dev/console"} <= names


def test_full_staging_links_every_applet(tmp_path: Path, fake_busybox: Path) -> None:
    """The rootfs tree links each applet busybox lists, wherever it lists it."""
    root = tmp_path / "staging"
    images.make_staging(root, busybox=fake_busybox, lean=False)
    for applet in ("bin/ls", "sbin/reboot", "usr/bin/["):
        assert os.readlink(root / applet) == "/bin/busybox"
    assert not (root / "bin/sh").exists()


def test_staging_without_busybox_says_which_package(tmp_path: Path) -> None:
    """A missing busybox names the Debian package to install."""
    with pytest.raises(BuildError, match="busybox-static"):
        images.make_staging(tmp_path / "s", busybox=tmp_path / "nope")


def test_shipped_config_has_every_fragment_option() -> None:
    """Every option of microvm.fragment is in the shipped full config, as the fragment says."""
    fragment = shipped("microvm.fragment").decode()
    assert kernel.fragment_mismatches(fragment, shipped("microvm.config").decode()) == []
    wanted = kernel.parse_config(fragment)
    assert wanted["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] == "y"
    assert wanted["CONFIG_VT"] is None


def test_fragment_mismatch_is_reported() -> None:
    """A dropped or changed option is named; an absent 'is not set' option is fine."""
    fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n# CONFIG_D is not set\n"
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    problems = kernel.fragment_mismatches(fragment, config)
    assert problems == ["CONFIG_B: fragment wants y, config has not set",
                        "CONFIG_C: fragment wants not set, config has y"]


def test_shipped_patches_are_the_pvm_pair() -> None:
    """Both kvm-pvm patches ship, in apply order."""
    assert [name for name, _ in shipped_patches()] == ["0001-int3-selftest-skippable.patch",
                                                       "0002-pvm-quirks.patch"]


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch(1) not installed")
def test_sync_patches_switches_variants(tmp_path: Path) -> None:
    """Patches are applied once, reversed when unwanted, and a changed one is re-applied."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.c").write_text("one\n")
    v1 = b"--- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-one\n+two\n"
    v2 = b"--- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-one\n+three\n"
    kernel.sync_patches(src, [("p.patch", v1)])
    kernel.sync_patches(src, [("p.patch", v1)])
    assert (src / "f.c").read_text() == "two\n"
    kernel.sync_patches(src, [("p.patch", v2)])
    assert (src / "f.c").read_text() == "three\n"
    kernel.sync_patches(src, [])
    assert (src / "f.c").read_text() == "one\n"
    assert not list(src.glob(kernel.APPLIED_PREFIX + "*"))


def test_stamp_needs_digest_and_outputs(tmp_path: Path) -> None:
    """A stage is fresh only with the same input digest and all its outputs present."""
    output = tmp_path / "vmlinux"
    stamp = Stamp(tmp_path, "kernel")
    assert not stamp.fresh("abc", [output])
    output.write_bytes(b"x")
    stamp.record("abc")
    assert stamp.fresh("abc", [output])
    assert not stamp.fresh("abd", [output])
    output.unlink()
    assert not stamp.fresh("abc", [output])


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs not installed")
def test_ext4_image_is_reproducible_and_cached(tmp_path: Path, tree: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Two builds of one tree give the same image; a third run is skipped."""
    images.build_disk(tmp_path, "a.ext4", tree, "4M", images.ROOTFS_UUID)
    first = (tmp_path / "a.ext4").read_bytes()
    (tmp_path / ".stamps/a.ext4").unlink()
    images.build_disk(tmp_path, "a.ext4", tree, "4M", images.ROOTFS_UUID)
    assert (tmp_path / "a.ext4").read_bytes() == first
    capsys.readouterr()
    images.build_disk(tmp_path, "a.ext4", tree, "4M", images.ROOTFS_UUID)
    assert "up to date" in capsys.readouterr().err


def test_ext4_image_carries_no_host_ctime(tmp_path: Path, tree: Path) -> None:
    """Every inode's ctime is 0, not the host's (which differs between builds)."""
    images.build_disk(tmp_path, "a.ext4", tree, "4M", images.ROOTFS_UUID)
    for path in ["/", "/bin", "/bin/tool", "/bin/link", "/init"]:
        shown = subprocess.run(["debugfs", "-R", f"stat {path}", tmp_path / "a.ext4"],
                               capture_output=True, text=True, check=True).stdout
        assert " ctime: 0x00000000:" in shown, (path, shown)


def test_shared_libraries_include_the_loader() -> None:
    """ldd parsing finds libc and the dynamic loader of a dynamically linked binary."""
    libs = [p.name for p in images.shared_libraries(Path("/usr/bin/env"))]
    assert any(n.startswith("libc.so") for n in libs)
    assert any(n.startswith("ld-linux") for n in libs)


@pytest.mark.parametrize(("argv", "message"), [
    (["build", "--stages", "kernel,foo"], "unknown stage 'foo'"),
    (["build", "--stages", ","], "unknown stage"),
    (["build", "--jobs", "0"], "want a positive number"),
    (["build", "--kconfig", "/nonexistent/config"], "/nonexistent/config: no such file"),
    (["build", "--kconfig", "/etc/hostname", "--from-fragment"], "not allowed with"),
    ([], "required: COMMAND"),
    (["boot"], "invalid choice: 'boot'"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments exit 2 with argparse's one-line reason, never a traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_jobs_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed $JOBS is named, not a traceback."""
    monkeypatch.setenv("JOBS", "many")
    monkeypatch.setattr(deps, "missing_packages", lambda packages: [])
    assert main(["build", "--out", str(tmp_path), "--stages", "kernel"]) == 1
    assert "$JOBS: want a positive number, got 'many'" in capsys.readouterr().err


def test_path_without_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'path' on an empty directory fails and says to build first."""
    assert main(["path", "--out", str(tmp_path)]) == 1
    assert "run 'stratovmm-guest build' first" in capsys.readouterr().err


def test_path_prints_built_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'path' prints only the directory, ready for STRATOVMM_GUEST_DIR=$(...)."""
    for name in ("vmlinux", "initramfs.cpio"):
        (tmp_path / name).write_bytes(b"")
    assert main(["path", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path.resolve()}\n"


def test_cmdline_is_the_test_append(capsys: pytest.CaptureFixture[str]) -> None:
    """'cmdline' prints the same command line the tests boot with."""
    assert main(["cmdline"]) == 0
    assert capsys.readouterr().out == HOST_APPEND + "\n"


def test_demo_without_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """'demo' with no guest anywhere names the directory and both ways out."""
    monkeypatch.setenv("STRATOVMM_GUEST_DIR", str(tmp_path))
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err
    assert "stratovmm-guest build" in err


class _Tty(io.StringIO):
    """A stdin that claims to be a terminal."""

    def isatty(self) -> bool:
        """Pretend a user is at the keyboard."""
        return True


@pytest.mark.parametrize(("stdin", "cmd", "append_has"), [
    (io.StringIO(), None, cmd_arg(DEMO_CMD)),
    (_Tty(), None, "guest.shell=1"),
    (_Tty(), "nproc", cmd_arg("nproc")),
])
def test_demo_boots_the_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdin: io.StringIO,
                              cmd: str | None, append_has: str) -> None:
    """'demo' execs the VMM: 2 vCPUs, 512M, the initramfs, a shell only on a terminal."""
    for name in ("vmlinux", "initramfs.cpio"):
        (tmp_path / name).write_bytes(b"")
    seen: list[list[str]] = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: seen.append(list(argv)))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["demo", "--guest", str(tmp_path), *(["--cmd", cmd] if cmd else [])]) == 0
    argv = seen[0]
    assert argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-m") + 1] == "512M"
    assert argv[argv.index("-initrd") + 1] == str(tmp_path / "initramfs.cpio")
    append = argv[argv.index("-append") + 1]
    assert append.startswith(HOST_APPEND)
    assert append_has in append.split()
    assert ("guest.shell=1" in append) == (append_has == "guest.shell=1")


def test_missing_packages_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A stage whose Debian packages are missing stops before building and names them."""
    monkeypatch.setattr(deps, "missing_packages", lambda packages: ["fio"])
    assert main(["build", "--out", str(tmp_path), "--stages", "disks"]) == 1
    assert "missing Debian packages: fio" in capsys.readouterr().err


def test_deps_stage_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """'--stages deps' alone checks every stage's packages and, without root, says so."""
    asked: list[str] = []

    def missing(packages: list[str]) -> list[str]:
        asked.extend(packages)
        return ["bison", "flex"]

    monkeypatch.setattr(deps, "missing_packages", missing)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["build", "--out", str(tmp_path), "--stages", "deps"]) == 1
    err = capsys.readouterr().err
    assert "install bison flex with apt-get and needs root" in err
    assert "sudo" in err
    assert {"linux-source-6.1", "busybox-static", "e2fsprogs", "fio"} <= set(asked)
