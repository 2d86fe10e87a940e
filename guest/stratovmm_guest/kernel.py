"""The guest kernel: Debian's ``linux-source-6.1`` with the config kept in this package.

Why our own kernel: Debian's stock kernel builds ``VIRTIO_MMIO=m`` without
``VIRTIO_MMIO_CMDLINE_DEVICES``, so it can find virtio-mmio devices only
through ACPI, which a microVM without firmware does not have.  The shipped
``microvm.config`` is the full ``.config`` made from ``microvm.fragment`` with
``make allnoconfig KCONFIG_ALLCONFIG=microvm.fragment`` (``--from-fragment``
redoes that); the fragment's comments say why each boot-time option is there.

The two patches under ``data/patches`` are the kvm-pvm workarounds (kvm-pvm
emulates the guest kernel and cannot run its int3 self-test, nor SYSCALL's and
``INT $0x80``'s user-to-kernel switch; each patch's comment says how it copes):
they only act when ``no_int3_selftest`` / ``pvm_quirks`` are on the kernel
command line, so the patched kernel is also fine on VMX/SVM hosts.
``--no-pvm-patches`` builds the plain kernel; switching between the two in the
same output directory reverses or applies the patches in the source tree and
lets ``make`` rebuild only what they touch.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from stratovmm_guest.common import (
    BuildError,
    Stamp,
    digest,
    log,
    run,
    shipped,
    shipped_patches,
    write_if_changed,
)
from stratovmm_guest.progress import KbuildProgress

# How long a first build of the guest takes on a 2-core host, nearly all of it this
# kernel's make (printed before make starts and in ``build --help``); the one place the
# estimate is written.
FIRST_BUILD_TIME = "about 25 minutes on 2 cores"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_DIR = "linux-source-6.1"
# Markers inside the source tree: a copy of each applied patch (so a changed
# patch can be reversed with the text that was applied), the source it was
# extracted from, and the config input last copied to .config.
APPLIED_PREFIX = ".stratovmm-applied-"
SOURCE_MARK = ".stratovmm-source"
CONFIG_MARK = ".stratovmm-config-input"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class KernelOptions:
    """What varies between kernel builds."""

    pvm_patches: bool = True
    kconfig: Path | None = None
    from_fragment: bool = False
    jobs: int = 1


def parse_config(text: str) -> dict[str, str | None]:
    """A Kconfig file as ``{option: value}``; ``None`` for ``# ... is not set``."""
    options: dict[str, str | None] = {}
    for line in text.splitlines():
        if m := _SET.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = None
    return options


def fragment_mismatches(fragment: str, config: str) -> list[str]:
    """Fragment options that Kconfig dropped or changed in ``config``.

    Kconfig silently drops an option whose dependencies are not met, so a
    typo or a missing dependency in the fragment would otherwise go unnoticed
    until the guest fails to find its disk.
    """
    have = parse_config(config)
    problems = []
    for option, wanted in parse_config(fragment).items():
        got = have.get(option)
        if got != wanted:
            shown = "not set" if got is None else got
            problems.append(f"{option}: fragment wants {wanted or 'not set'}, config has {shown}")
    return problems


def _source_id() -> str:
    """Identifies the installed source tarball (a Debian update replaces it)."""
    if not SOURCE_TARBALL.is_file():
        raise BuildError(f"{SOURCE_TARBALL} is missing: apt-get install linux-source-6.1 "
                         "(or run the 'deps' stage as root)")
    st = SOURCE_TARBALL.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def extract_source(work: Path) -> Path:
    """Unpack the tarball once; again only when Debian ships a new one."""
    src = work / SOURCE_DIR
    source_id = _source_id()
    mark = src / SOURCE_MARK
    if mark.is_file() and mark.read_text() == source_id:
        return src
    log(f"extracting {SOURCE_TARBALL} (takes a minute or two)")
    tmp = work / "extract.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["tar", "-C", tmp, "-xf", SOURCE_TARBALL])
    (tmp / SOURCE_DIR).rename(src)
    tmp.rmdir()
    mark.write_text(source_id)
    return src


def sync_patches(src: Path, wanted: list[tuple[str, bytes]]) -> None:
    """Make the tree carry exactly ``wanted``: reverse stale patches, apply missing ones.

    Reversal goes in the opposite order of application, with the text that
    was applied, so patches that touch the same file stay consistent.
    """
    wanted_map = dict(wanted)
    applied = sorted(src.glob(APPLIED_PREFIX + "*"), reverse=True)
    for mark in applied:
        name = mark.name[len(APPLIED_PREFIX):]
        if wanted_map.get(name) != mark.read_bytes():
            log(f"reversing {name}")
            run(["patch", "-d", src, "-p1", "-R", "--quiet"], stdin=mark.read_bytes())
            mark.unlink()
    for name, text in wanted:
        mark = src / (APPLIED_PREFIX + name)
        if not mark.exists():
            log(f"applying {name}")
            run(["patch", "-d", src, "-p1", "--forward", "--quiet"], stdin=text)
            mark.write_bytes(text)


def configure(src: Path, work: Path, opts: KernelOptions) -> None:
    """Produce ``.config`` from the shipped full config (or the fragment) and check it."""
    fragment = shipped("microvm.fragment")
    if opts.from_fragment:
        frag_path = work / "microvm.fragment"
        write_if_changed(frag_path, fragment)
        log("make allnoconfig KCONFIG_ALLCONFIG=microvm.fragment")
        run(["make", "-C", src, "-s", "allnoconfig", f"KCONFIG_ALLCONFIG={frag_path}"])
        (src / CONFIG_MARK).unlink(missing_ok=True)
    else:
        config_in = opts.kconfig.read_bytes() if opts.kconfig else shipped("microvm.config")
        mark = src / CONFIG_MARK
        if not (mark.is_file() and mark.read_bytes() == config_in):
            (src / ".config").write_bytes(config_in)
            mark.write_bytes(config_in)
        run(["make", "-C", src, "-s", "olddefconfig"])
    problems = fragment_mismatches(fragment.decode(), (src / ".config").read_text())
    if problems:
        raise BuildError("kernel config lost options of microvm.fragment:\n  "
                         + "\n  ".join(problems))


def kernel_digest(opts: KernelOptions, patches: list[tuple[str, bytes]]) -> str:
    """Everything the kernel binary depends on (``jobs`` does not change it)."""
    if opts.from_fragment:
        config = b"fragment:" + shipped("microvm.fragment")
    else:
        config = opts.kconfig.read_bytes() if opts.kconfig else shipped("microvm.config")
    return digest([_source_id(), config, *(name.encode() + text for name, text in patches)])


def build_kernel(out: Path, work: Path, opts: KernelOptions, force: bool = False) -> None:
    """The ``kernel`` stage: ``OUT/vmlinux`` (stripped ELF, PVH entry), ``bzImage``, ``config``.

    ``vmlinux`` is stripped: the symbols only add megabytes for the VMM to
    copy, and the PVH note that our loader needs is kept by ``strip``.
    """
    patches = shipped_patches() if opts.pvm_patches else []
    outputs = [out / "vmlinux", out / "bzImage", out / "config"]
    stamp = Stamp(out, "kernel")
    want = kernel_digest(opts, patches)
    if not force and stamp.fresh(want, outputs):
        log("kernel: up to date")
        return
    src = extract_source(work)
    sync_patches(src, patches)
    configure(src, work, opts)
    build_log = work / "kernel-build.log"
    log(f"make -j{opts.jobs} bzImage in {src} (log: {build_log}); a first build takes "
        f"{FIRST_BUILD_TIME}, later ones are incremental")
    progress = KbuildProgress(log)
    run(["make", "-C", src, f"-j{opts.jobs}", "bzImage"], log_to=build_log,
        on_line=progress.feed)
    log(progress.summary())
    shutil.copyfile(src / "arch/x86/boot/bzImage", out / "bzImage")
    run(["strip", "-o", out / "vmlinux.tmp", src / "vmlinux"])
    (out / "vmlinux.tmp").replace(out / "vmlinux")
    shutil.copyfile(src / ".config", out / "config")
    stamp.record(want)
    for path in outputs[:2]:
        log(f"{path.name}: {path.stat().st_size} bytes")
