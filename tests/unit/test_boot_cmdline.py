"""The kernel command line: user words first, device words after, NUL-terminated, and the
kernel's length limit enforced with a message naming -append."""

from __future__ import annotations

import pytest

from stratovmm.boot.cmdline import Cmdline
from stratovmm.errors import ConfigError


def test_user_words_then_device_words() -> None:
    """Devices' words follow the user's -append, separated by single spaces."""
    cmdline = Cmdline("console=ttyS0 reboot=k")
    cmdline.append("virtio_mmio.device=4K@0xd0000000:5")
    cmdline.append("virtio_mmio.device=4K@0xd0001000:6")
    assert cmdline.render(2047) == (b"console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5"
                                    b" virtio_mmio.device=4K@0xd0001000:6\0")
    assert str(cmdline) == cmdline.render(2047)[:-1].decode()


def test_empty_and_device_only() -> None:
    """No -append: just the device words (no leading space); nothing at all: only the NUL."""
    assert Cmdline().render(10) == b"\0"
    assert Cmdline("   ").render(10) == b"\0"
    cmdline = Cmdline()
    cmdline.append("a=1")
    assert cmdline.render(10) == b"a=1\0"


def test_user_text_kept_as_written() -> None:
    """The user's spacing inside -append is not rewritten (only the ends are trimmed)."""
    assert Cmdline(' guest.cmd="a  b" x ').render(100) == b'guest.cmd="a  b" x\0'


def test_length_limit_exact() -> None:
    """A command line of exactly the limit fits; one byte more is refused naming -append."""
    Cmdline("x" * 2047).render(2047)
    with pytest.raises(ConfigError, match="-append: kernel command line is 2048 bytes, the"
                                          " kernel accepts 2047"):
        Cmdline("x" * 2048).render(2047)


def test_device_words_count_toward_the_limit() -> None:
    """Words the devices add count: the limit applies to the whole line."""
    cmdline = Cmdline("x" * 2040)
    cmdline.append("y" * 7)
    with pytest.raises(ConfigError, match="2048 bytes"):
        cmdline.render(2047)


def test_utf8_counts_bytes() -> None:
    """The limit counts encoded bytes, not characters."""
    with pytest.raises(ConfigError):
        Cmdline("é" * 1024).render(2047)


def test_nul_refused() -> None:
    """A NUL would end the command line early: refused."""
    with pytest.raises(ConfigError, match=r"-append: .*NUL"):
        Cmdline("a\0b")


@pytest.mark.parametrize("word", ["", "a b", "a\tb", "a\0b", "a\n"])
def test_bad_device_word(word: str) -> None:
    """A device word must be one non-empty word."""
    with pytest.raises(ValueError, match="bad kernel command line word"):
        Cmdline().append(word)


def test_has_key() -> None:
    """has_key finds key and key=value among the user's words, not inside other words."""
    cmdline = Cmdline("console=ttyS0 quiet root=/dev/vda")
    assert cmdline.has_key("console") and cmdline.has_key("quiet") and cmdline.has_key("root")
    assert not cmdline.has_key("consol") and not cmdline.has_key("ttyS0")
    cmdline.append("virtio_mmio.device=4K@0xd0000000:5")
    assert not cmdline.has_key("virtio_mmio.device"), "only the user's words"
