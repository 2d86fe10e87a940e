"""StratoVirt 2.x's rng spelling: ``-object rng-random`` + ``-device virtio-rng-device``,
beside v0.3's ``-rng``."""

from __future__ import annotations

from typing import Any

import pytest
import stratovmm_rng.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"rng": plugin}


def rng(*argv: str) -> dict[str, Any] | None:
    doc = parse_config(["-kernel", "/boot/none", *argv], PLUGINS).document
    item: dict[str, Any] | None = doc.get("rng")
    return item


def test_kata_rng_line() -> None:
    """Kata's rng (-object rng-random,id=objrng0,filename=/dev/urandom + -device
    virtio-rng-device,rng=objrng0,id=virtio-rng0) is the rng item."""
    assert rng("-object", "rng-random,id=objrng0,filename=/dev/urandom",
               "-device", "virtio-rng-device,rng=objrng0,id=virtio-rng0") == {
        "random_file": "/dev/urandom"}


def test_max_bytes_per_period_is_bytes_per_second() -> None:
    """max-bytes per period (ms) becomes bytes_per_sec, as 2.x computes it; an object no
    device names makes no device."""
    assert rng("-device", "virtio-rng-device,rng=r,max-bytes=1000,period=500",
               "-object", "rng-random,id=r,filename=/dev/random") == {
        "random_file": "/dev/random", "bytes_per_sec": 2000}
    assert rng("-object", "rng-random,id=r,filename=/dev/random") is None


@pytest.mark.parametrize(("argv", "needle"), [
    (["-device", "virtio-rng-device,rng=r"], "-device virtio-rng-device: no -object rng-random"),
    (["-object", "rng-random,id=r,filename=/dev/random",
      "-device", "virtio-rng-device,rng=r,max-bytes=100"], "max-bytes and period go together"),
    (["-object", "rng-random,id=r,filename=/dev/random",
      "-device", "virtio-rng-device,rng=r,max-bytes=100,period=0"], "period=0 must be at least"),
    (["-object", "rng-random,id=r,filename=/dev/random",
      "-device", "virtio-rng-device,rng=r,max-bytes=1,period=1000"],
     "virtio-rng-device: 1 is below the minimum 64"),
    (["-object", "rng-random,id=r"], "-object rng-random: missing filename="),
    (["-object", "rng-random,id=r,filename=/dev/random", "-rng", "random_file=/dev/random",
      "-device", "virtio-rng-device,rng=r"], "given twice"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """A missing object or filename, half a rate, a zero period, a rate below 64 bytes/s
    and two rng devices are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        rng(*argv)


def test_help_shows_both_forms() -> None:
    """--help lists v0.3's -rng and 2.x's -object rng-random + -device virtio-rng-device."""
    text = help_text(PLUGINS)
    for needle in ("-rng random_file=PATH", "-object rng-random,id=ID,filename=PATH",
                   "-device virtio-rng-device,rng=ID"):
        assert needle in text
