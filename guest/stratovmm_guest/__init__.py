"""The guest builder behind ``stratovmm-guest``: a kernel, initramfs and disks from Debian.

Users without a prebuilt guest (``$STRATOVMM_GUEST_DIR``) get one here:
``kernel`` builds linux-source-6.1 with the config shipped in
``stratovmm_guest/data``, ``images`` the busybox initramfs and ext4 disks,
``cpio`` writes the initramfs deterministically, ``deps`` knows the Debian
packages, ``cli`` ties the stages together with caching.  It is a
distribution of its own (``stratovmm-guest``): the VMM never imports it.
"""
