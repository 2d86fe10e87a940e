"""The guest builder behind ``stratovmm-guest``: a kernel, initramfs and disks from Debian.

Users without a prebuilt guest (``$STRATOVMM_GUEST_DIR``) get one here:
``kernel`` builds linux-source-6.1 with the config shipped in
``stratovmm/guest``, ``images`` the busybox initramfs and ext4 disks,
``cpio`` writes the initramfs deterministically, ``deps`` knows the Debian
packages, ``cli`` ties the stages together with caching.
"""

from __future__ import annotations

from stratovmm.guestbuild.cli import main

__all__ = ["main"]
