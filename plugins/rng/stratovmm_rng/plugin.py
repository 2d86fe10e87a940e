"""The hookimpls of the rng plugin: ``-rng random_file=PATH[,bytes_per_sec=N]``, and StratoVirt
2.x's ``-object rng-random`` + ``-device virtio-rng-device``.

The device model is imported when a device is built, so that a VM without one does not
pay for importing it at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stratovmm.api import (
    BuildContext,
    ConfigError,
    DeviceRegistry,
    DeviceType,
    Join,
    OptionSpec,
    SeccompRules,
    SubOption,
    ValueKind,
    hookimpl,
)
from stratovmm_rng.schema import RNG_SCHEMA

if TYPE_CHECKING:
    from stratovmm_rng.device import RngDevice

STRATOVMM_API = "1.1"

RNG_OPTION = OptionSpec(
    "rng", "virtio-rng fed from a host file", "rng",
    sub=(SubOption("random_file", "random_file", ValueKind.PATH, required=True,
                   help="host entropy source, e.g. /dev/urandom"),
         SubOption("bytes_per_sec", "bytes_per_sec", ValueKind.INT,
                   help="rate limit, 64 <= N < 10^9")),
    metavar="random_file=PATH[,bytes_per_sec=N]",
)


def rng_from_object(values: Mapping[str, Any], obj: Mapping[str, Any]) -> dict[str, Any]:
    """``-device virtio-rng-device,rng=ID[,max-bytes=N,period=MS]`` over ``-object
    rng-random,id=ID,filename=PATH`` as the ``rng`` item: StratoVirt 2.x's
    ``parse_rng_dev`` turns max-bytes per period (ms) into bytes per second."""
    item: dict[str, Any] = {"random_file": obj["filename"]}
    if ("max-bytes" in values) != ("period" in values):
        raise ValueError("max-bytes and period go together (max-bytes per period ms)")
    if "period" in values:
        if values["period"] <= 0:
            raise ValueError(f"period={values['period']} must be at least 1 (ms)")
        item["bytes_per_sec"] = values["max-bytes"] * 1000 // values["period"]
    return item


# StratoVirt 2.x's spelling: the entropy source is an object the device names.
RNG_OBJECT_OPTION = OptionSpec(
    "object", "an entropy source for -device virtio-rng-device (StratoVirt 2.x)", "rng-random",
    driver="rng-random", backend=True, file_key=False, repeatable=True, id_field="id",
    sub=(SubOption("id", "id", required=True),
         SubOption("filename", "filename", ValueKind.PATH, required=True,
                   help="host entropy source, e.g. /dev/urandom")),
    metavar="id=ID,filename=PATH",
)

RNG_DEVICE_OPTION = OptionSpec(
    "device", "virtio-rng fed from the -object rng-random named by rng= (StratoVirt 2.x)",
    "rng", driver="virtio-rng-device",
    sub=(SubOption("rng", None, required=True, help="the -object rng-random id"),
         SubOption("id", None, help="accepted (the device's id is rng)"),
         SubOption("max-bytes", None, ValueKind.INT, help="bytes per period"),
         SubOption("period", None, ValueKind.INT, help="ms; 64 <= rate < 10^9 bytes/s")),
    join=Join("rng", "rng-random", rng_from_object),
    metavar="rng=ID[,id=ID][,max-bytes=N,period=MS]",
)


def create_rng(ctx: BuildContext, item: dict[str, Any]) -> RngDevice:
    """Open the entropy file and build the device (id ``rng``)."""
    from stratovmm_rng.device import RngDevice

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
    """``-rng`` and ``"rng"``; 2.x's ``-object rng-random`` and ``-device virtio-rng-device``."""
    registry.add_device_type(DeviceType("rng", RNG_OPTION, RNG_SCHEMA, create_rng))
    registry.add_option(RNG_OBJECT_OPTION)
    registry.add_option(RNG_DEVICE_OPTION)


@hookimpl
def vmm_seccomp_rules(rules: SeccompRules) -> None:
    """Reading the entropy file straight into guest buffers, rewinding a regular file."""
    rules.allow("readv", "read", "lseek")
