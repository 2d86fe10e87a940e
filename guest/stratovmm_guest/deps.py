"""The Debian packages each stage needs, and the ``deps`` stage that installs them.

Only ``apt-get install`` needs root, so it is a stage of its own: a user runs
``sudo stratovmm-guest build --stages deps`` once and builds everything else
unprivileged.  Other stages check their packages first and name the missing
ones instead of failing halfway through the kernel build.
"""

from __future__ import annotations

import os
import subprocess

from stratovmm_guest.common import BuildError, log, run

STAGE_PACKAGES: dict[str, tuple[str, ...]] = {
    "kernel": ("linux-source-6.1", "build-essential", "bc", "bison", "flex", "libelf-dev",
               "libssl-dev", "xz-utils", "patch"),
    "initramfs": ("busybox-static",),
    "disks": ("busybox-static", "e2fsprogs", "fio"),
}


def packages_for(stages: list[str]) -> list[str]:
    """The packages of ``stages``, each once, in a stable order."""
    return sorted({p for s in stages for p in STAGE_PACKAGES.get(s, ())})


def missing_packages(packages: list[str]) -> list[str]:
    """Those of ``packages`` that dpkg does not list as installed."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *packages],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError("dpkg-query not found: the guest builder needs Debian 12 (bookworm) "
                         "packages") from exc
    installed = {line.split()[0] for line in proc.stdout.splitlines()
                 if line.endswith(" ok installed")}
    return [p for p in packages if p not in installed]


def install(stages: list[str]) -> None:
    """The ``deps`` stage: apt-get the packages the other selected stages need.

    ``apt-get update`` first: a fresh Debian image (a container, a CI runner)
    often has no package lists yet, and stale ones point at removed files.
    """
    missing = missing_packages(packages_for(stages))
    if not missing:
        log("deps: all packages installed")
        return
    if os.geteuid() != 0:
        raise BuildError(f"stage 'deps' must install {' '.join(missing)} with apt-get and needs "
                         "root: run it with sudo (sudo stratovmm-guest build --stages deps), "
                         "then build the rest as yourself")
    log(f"apt-get update; apt-get install {' '.join(missing)}")
    run(["apt-get", "update", "-q"])
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
        env={"DEBIAN_FRONTEND": "noninteractive"})


def require(stages: list[str]) -> None:
    """Stop before building anything when a stage's packages are missing."""
    missing = missing_packages(packages_for(stages))
    if missing:
        hint = "sudo " if os.geteuid() != 0 else ""
        raise BuildError(f"missing Debian packages: {' '.join(missing)}; install them with "
                         f"'{hint}apt-get install {' '.join(missing)}' or "
                         f"'{hint}stratovmm-guest build --stages deps'")
