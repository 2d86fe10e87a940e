"""StratoVirt 2.x's ``-device virtio-balloon-device`` beside v0.3's ``-balloon``."""

from __future__ import annotations

import pytest
import stratovmm_balloon.plugin as plugin

from stratovmm.api import ConfigError
from stratovmm.testing.config import help_text, parse_config

PLUGINS = {"balloon": plugin}


@pytest.mark.parametrize(("value", "item"), [
    ("virtio-balloon-device", {}),
    ("virtio-balloon-device,deflate-on-oom=on,id=balloon0", {"deflate_on_oom": True}),
    ("virtio-balloon-device,deflate-on-oom=false,free-page-reporting=off",
     {"deflate_on_oom": False}),
])
def test_device_is_the_balloon(value: str, item: dict[str, bool]) -> None:
    """-device virtio-balloon-device[,deflate-on-oom=] is the balloon item."""
    doc = parse_config(["-kernel", "/boot/none", "-device", value], PLUGINS).document
    assert doc["balloon"] == item


@pytest.mark.parametrize(("argv", "needle"), [
    (["-device", "virtio-balloon-device,free-page-reporting=on"],
     "free-page-reporting='on': must be one of off"),
    (["-balloon", "deflate-on-oom=on", "-device", "virtio-balloon-device"], "given twice"),
])
def test_refusals_name_the_option(argv: list[str], needle: str) -> None:
    """Free page reporting (not offered) and a second balloon are refused by name."""
    with pytest.raises(ConfigError, match=needle):
        parse_config(["-kernel", "/boot/none", *argv], PLUGINS)


def test_help_shows_both_forms() -> None:
    """--help lists -balloon and -device virtio-balloon-device."""
    text = help_text(PLUGINS)
    assert "-balloon deflate-on-oom=on|off" in text
    assert "-device virtio-balloon-device[,deflate-on-oom=on|off]" in text
