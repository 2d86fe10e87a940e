#!/bin/sh
# Install StratoVMM into a venv, build the guest (first time: minutes, mostly the
# kernel build; then cached) and boot it with its serial console on this terminal: a busybox
# shell in the guest; `exit` ends the VM.  Arguments go to `stratovmm-guest
# demo` (e.g. --cmd 'cat /proc/cpuinfo').
#
# For a fresh Debian 12 with /dev/kvm (your user needs access to it, e.g. the
# kvm group).  Uses sudo for apt-get when not run as root.  With
# $STRATOVMM_GUEST_DIR set, that prebuilt guest is booted and nothing is built.
# $VENV (default .venv in the checkout) is created only when missing.
set -eu
cd "$(dirname "$0")/.."
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
VENV=${VENV:-.venv}

need=
for p in python3-venv python3-dev build-essential linux-libc-dev libseccomp2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    $SUDO apt-get update -q
    # shellcheck disable=SC2086  # $need is a word list
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need
fi

if [ ! -x "$VENV/bin/stratovmm-guest" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet . plugins/*/ ./guest
fi

if [ -z "${STRATOVMM_GUEST_DIR:-}" ]; then
    $SUDO "$VENV/bin/stratovmm-guest" build --stages deps
    "$VENV/bin/stratovmm-guest" build --stages kernel,initramfs,disks
fi
exec "$VENV/bin/stratovmm-guest" demo "$@"
