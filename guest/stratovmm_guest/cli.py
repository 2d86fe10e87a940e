"""``stratovmm-guest``: build the test/demo guest from Debian packages, find it, boot it.

::

    stratovmm-guest build [--out DIR] [--stages deps,kernel,initramfs,disks]
                          [--no-pvm-patches] [--jobs N] [--kconfig FILE | --from-fragment]
    stratovmm-guest path [--out DIR]        print DIR once it holds a built guest
    stratovmm-guest cmdline                 the kernel command line this project boots with
    stratovmm-guest demo [--guest DIR] [--cmd COMMAND]

The output directory has the layout ``$STRATOVMM_GUEST_DIR`` expects
(``vmlinux``, ``initramfs.cpio``, ``rootfs.ext4`` ...), so
``STRATOVMM_GUEST_DIR=$(stratovmm-guest path)`` points the tests at it.
Scratch files (the kernel tree, ~1.5 GB after a build) live in ``DIR/work``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stratovmm.testing.guest import HOST_APPEND, HOST_CPU, boot_args, stratovmm_command
from stratovmm_guest import deps
from stratovmm_guest.common import BuildError, log
from stratovmm_guest.images import build_disks, build_initramfs
from stratovmm_guest.kernel import FIRST_BUILD_TIME, KernelOptions, build_kernel
from stratovmm_guest.progress import duration, stage

STAGES = ("deps", "kernel", "initramfs", "disks")
# What ``path`` and ``demo`` need; the disks are optional extras.
BOOT_FILES = ("vmlinux", "initramfs.cpio")
DEMO_CMD = "uname -sr; nproc; head -1 /proc/meminfo"


def default_out() -> Path:
    """``$XDG_CACHE_HOME/stratovmm/guest``, else ``~/.cache/stratovmm/guest``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "stratovmm" / "guest"


def stage_list(text: str) -> list[str]:
    """``--stages`` value: comma-separated stage names, run in the canonical order."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown stage {', '.join(map(repr, unknown)) or repr(text)} "
            f"(choose from {', '.join(STAGES)}, comma-separated)")
    return [s for s in STAGES if s in names]


def positive_int(text: str) -> int:
    """``--jobs`` value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive number, got {text!r}")
    return value


def default_jobs() -> int:
    """``$JOBS`` (as the shared build-guest.sh took it), else one job per CPU."""
    text = os.environ.get("JOBS")
    if not text:
        return os.cpu_count() or 1
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise BuildError(f"$JOBS: {exc}") from exc


def existing_file(text: str) -> Path:
    """``--kconfig`` value: checked up front, not after extracting the kernel source."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command line; every subcommand takes ``--out`` where it reads a build."""
    parser = argparse.ArgumentParser(
        prog="stratovmm-guest",
        description="Build the StratoVMM guest (kernel, busybox initramfs, ext4 disks) from "
                    "Debian 12 packages, print where it is, or boot it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser("build", help="build (or bring up to date) the guest",
                           description="Stages run in the order deps, kernel, initramfs, disks; "
                                       "finished ones are skipped. Only 'deps' needs root. A "
                                       f"first build takes {FIRST_BUILD_TIME}, nearly all of "
                                       "it the kernel; each stage is announced and timed, and "
                                       "the kernel's make reports its progress.")
    build.add_argument("--out", type=Path, default=default_out(),
                       help="output directory (default: %(default)s)")
    build.add_argument("--stages", type=stage_list, default=list(STAGES),
                       help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    build.add_argument("--no-pvm-patches", dest="pvm_patches", action="store_false",
                       help="build the kernel without the kvm-pvm workaround patches")
    build.add_argument("--jobs", type=positive_int,
                       help="parallel make jobs (default: $JOBS, else the number of CPUs)")
    config = build.add_mutually_exclusive_group()
    config.add_argument("--kconfig", type=existing_file,
                        help="full kernel .config to use instead of the shipped microvm.config")
    config.add_argument("--from-fragment", action="store_true",
                        help="generate the config from microvm.fragment (make allnoconfig)")
    build.add_argument("--force", action="store_true",
                       help="rebuild the kernel even when it is up to date")

    path = sub.add_parser("path", help="print the directory of the built guest")
    path.add_argument("--out", type=Path, default=default_out(),
                      help="output directory (default: %(default)s)")

    sub.add_parser("cmdline", help="print the kernel command line for this host",
                   description="Prints the kernel command line this project boots with (the "
                               "kvm-pvm workarounds are harmless elsewhere).  On kvm-pvm "
                               "hosts a guest with several vCPUs also needs the VMM option "
                               f"-cpu {HOST_CPU} (its PV-IPI hypercall faults there).")

    demo = sub.add_parser("demo", help="boot the guest with its serial console on this terminal",
                          description="Boots vmlinux + initramfs.cpio with -smp 2 -m 512M; "
                                      "without --cmd it starts a shell in the guest (exit "
                                      "it to end the VM), or, when stdin is not a terminal, "
                                      f"runs {DEMO_CMD!r}.")
    demo.add_argument("--guest", type=Path,
                      help="guest directory (default: $STRATOVMM_GUEST_DIR, else the build "
                           "output directory)")
    demo.add_argument("--cmd", help="run this command in the guest instead of a shell")
    return parser


def guest_ready(directory: Path) -> bool:
    """The directory holds what a boot needs."""
    return all((directory / name).is_file() for name in BOOT_FILES)


def do_build(args: argparse.Namespace) -> None:
    """Run the selected stages, each announced and timed; check packages first so a
    failure comes early."""
    start = time.monotonic()
    out: Path = args.out.resolve()
    stages: list[str] = args.stages
    build_stages = [s for s in stages if s != "deps"]
    if "deps" in stages:
        with stage("deps", 1, len(stages)):
            deps.install(build_stages or list(STAGES[1:]))
    deps.require(build_stages)
    if not build_stages:
        return
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    run_stage: dict[str, Callable[[], None]] = {
        "kernel": lambda: build_kernel(out, work, KernelOptions(
            pvm_patches=args.pvm_patches, kconfig=args.kconfig,
            from_fragment=args.from_fragment, jobs=args.jobs or default_jobs()),
            force=args.force),
        "initramfs": lambda: build_initramfs(out, work),
        "disks": lambda: build_disks(out, work),
    }
    for number, name in enumerate(stages, 1):
        if name != "deps":
            with stage(name, number, len(stages)):
                run_stage[name]()
    log(f"done in {duration(time.monotonic() - start)}: {out}")


def do_path(args: argparse.Namespace) -> None:
    """Print the build directory, or fail when there is nothing to boot there."""
    out: Path = args.out.resolve()
    if not guest_ready(out):
        raise BuildError(f"no guest built in {out}: run 'stratovmm-guest build' first")
    print(out)


def demo_guest(explicit: Path | None) -> Path:
    """``--guest``, else ``$STRATOVMM_GUEST_DIR``, else the default build directory."""
    env = os.environ.get("STRATOVMM_GUEST_DIR")
    directory = explicit or (Path(env) if env else default_out())
    if not guest_ready(directory):
        raise BuildError(f"no guest in {directory} (needs {' and '.join(BOOT_FILES)}): run "
                         "'stratovmm-guest build' or set STRATOVMM_GUEST_DIR")
    return directory


def vmm_command() -> list[str]:
    """The ``stratovmm`` installed beside this ``stratovmm-guest``, else the one on PATH.

    ``scripts/demo.sh`` runs ``.venv/bin/stratovmm-guest`` without activating
    the venv, and PATH may hold another installation.
    """
    beside = Path(sys.executable).parent / "stratovmm"
    return [str(beside)] if beside.is_file() else stratovmm_command()


def demo_command(cmd: str | None) -> str | None:
    """The guest command: ``--cmd``, else none (a shell), else a fixed one without a terminal.

    A serial line has no end-of-file, so a guest shell fed from a pipe or
    /dev/null would wait forever; a CI run of the demo gets a command instead.
    """
    if cmd is not None or sys.stdin.isatty():
        return cmd
    log(f"stdin is not a terminal: running {DEMO_CMD!r} instead of a shell")
    return DEMO_CMD


def do_demo(args: argparse.Namespace) -> None:
    """Replace this process with the VMM so the serial console owns the terminal."""
    guest = demo_guest(args.guest)
    command = demo_command(args.cmd)
    extra = "" if command is not None else "guest.shell=1"
    argv = [*vmm_command(), *boot_args(guest, command=command, extra_append=extra,
                                       smp=2, mem="512M")]
    log(" ".join(argv))
    os.execvp(argv[0], argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stratovmm-guest`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            do_build(args)
        elif args.command == "path":
            do_path(args)
        elif args.command == "cmdline":
            print(HOST_APPEND)
        else:
            do_demo(args)
    except BuildError as exc:
        print(f"stratovmm-guest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
