"""The hookimpls of the rng plugin: ``-rng random_file=PATH[,bytes_per_sec=N]``."""

from __future__ import annotations

import os
from typing import Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    OptionSpec,
    SeccompRules,
    SubOption,
    ValueKind,
    hookimpl,
)
from stratovmm_rng.device import RngDevice
from stratovmm_rng.schema import RNG_SCHEMA

STRATOVMM_API = "1.1"

RNG_OPTION = OptionSpec(
    "rng", "virtio-rng fed from a host file", "rng",
    sub=(SubOption("random_file", "random_file", ValueKind.PATH, required=True,
                   help="host entropy source, e.g. /dev/urandom"),
         SubOption("bytes_per_sec", "bytes_per_sec", ValueKind.INT,
                   help="rate limit, 64 <= N < 10^9")),
    metavar="random_file=PATH[,bytes_per_sec=N]",
)


def create_rng(ctx: BuildContext, item: dict[str, Any]) -> RngDevice:
    """Open the entropy file and build the device (id ``rng``)."""
    path = item["random_file"]
    if not os.path.exists(path) or os.path.isdir(path):
        raise ConfigError(f"-rng random_file: {path!r} is not a readable file")
    try:
        device = RngDevice("rng", path, ctx.main_loop, item.get("bytes_per_sec"))
    except OSError as exc:
        raise ConfigError(f"-rng random_file: {path}: {exc.strerror}") from exc
    return device


@hookimpl
def vmm_register_devices(registry: DeviceRegistry) -> None:
    """``-rng`` and ``"rng"``."""
    registry.add_device_type(DeviceType("rng", RNG_OPTION, RNG_SCHEMA, create_rng))


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Reading the entropy file straight into guest buffers, rewinding a regular file."""
    rules.allow("readv", "read", "lseek")
