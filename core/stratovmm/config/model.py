"""The typed configuration the machine is built from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from stratovmm.boot import layout
from stratovmm.errors import ConfigError
from stratovmm.records import record

# QMP flow control (StratoVirt's ``LeakBucket`` in machine_manager): commands per second
# that one VM admits from all its QMP clients together.  ``STRATOVMM_QMP_RATE`` changes
# it for tools that drive QMP harder than a person does (the 10,000-message fuzz test).
QMP_COMMANDS_PER_SECOND = 100
QMP_RATE_ENV = "STRATOVMM_QMP_RATE"


def qmp_rate_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The admitted QMP commands per second: ``STRATOVMM_QMP_RATE`` or 100."""
    text = environ.get(QMP_RATE_ENV)
    if text is None:
        return QMP_COMMANDS_PER_SECOND
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not 1 <= rate <= 1e6:
        raise ConfigError(f"{QMP_RATE_ENV}: {text!r} is not a number of commands per second"
                          " between 1 and 1000000")
    return rate


@record(frozen=True)
class MachineConfig:
    """``machine-config``: vCPUs, their KVM paravirtual features (``-cpu``), guest RAM."""

    vcpus: int = 1
    mem_size: int = layout.MIN_MEM
    mem_path: str | None = None
    mem_share: bool = False
    dump_guest_core: bool = True
    cpu_features: Mapping[str, bool] = field(default_factory=dict)


@record(frozen=True)
class BootConfig:
    """``boot-source``: kernel, command line, initrd."""

    kernel: str
    append: str = ""
    initrd: str | None = None


@record(frozen=True)
class RuntimeOptions:
    """Options with no config-file equivalent."""

    name: str | None = None
    api_channel: str | None = None
    freeze: bool = False
    daemonize: bool = False
    pidfile: str | None = None
    seccomp: bool = True
    log_path: str | None = None
    log_enabled: bool = False
    config_file: str | None = None
    qmp_rate: float = QMP_COMMANDS_PER_SECOND


@record(frozen=True)
class VmConfig:
    """Everything needed to build and run one VM."""

    machine: MachineConfig
    boot: BootConfig
    iothreads: tuple[str, ...]
    runtime: RuntimeOptions
    document: dict[str, Any] = field(default_factory=dict)

    def devices(self, json_key: str) -> list[dict[str, Any]]:
        """The items configured under ``json_key`` (a list, even for single devices)."""
        value = self.document.get(json_key)
        if value is None:
            return []
        return list(value) if isinstance(value, list) else [value]


# QEMU's socket flags that StratoVirt v0.3 lets follow the path (``unix:PATH,server,nowait``,
# ``parse_path`` in machine_manager/src/cmdline.rs): the QMP socket is always a listening
# server that does not wait for a client, so they change nothing.
API_CHANNEL_FLAGS = frozenset({"server", "nowait", "server=on", "wait=off"})


def api_channel_path(channel: Any, option: str = "-api-channel") -> str:
    """The socket path of ``-api-channel unix:PATH[,server][,nowait]``; ``-qmp`` (StratoVirt
    2.x's name for it) also needs ``server`` and ``nowait``, as 2.x's
    ``check_api_channel`` does."""
    if not isinstance(channel, str) or not channel.startswith("unix:") or len(channel) < 6:
        raise ConfigError(f"{option}: {channel!r} is not unix:PATH")
    path, *flags = channel[len("unix:"):].split(",")
    unknown = [flag for flag in flags if flag not in API_CHANNEL_FLAGS]
    if unknown or not path:
        raise ConfigError(f"{option}: {channel!r} is not unix:PATH[,server][,nowait]")
    if option == "-qmp":
        for word, spellings in (("server", {"server", "server=on"}),
                                ("nowait", {"nowait", "wait=off"})):
            if not spellings & set(flags):
                raise ConfigError(f"-qmp: {word} is needed (unix:PATH,server,nowait: the QMP"
                                  " socket listens and does not wait for a client)")
    return path


def qmp_socket(runtime: dict[str, Any]) -> str | None:
    """The QMP socket path from whichever of ``-api-channel`` (v0.3), ``-qmp`` or ``-mon``
    (2.x) was given; one socket only."""
    given = [name for name in ("api-channel", "qmp", "mon") if name in runtime]
    if len(given) > 1:
        raise ConfigError(f"-{given[1]}: a second QMP socket (besides -{given[0]}) is not"
                          " supported; give one of -api-channel, -qmp and -mon")
    if not given:
        return None
    if given[0] == "mon":
        return str(runtime["mon"]["path"])
    return api_channel_path(runtime[given[0]], f"-{given[0]}")


def check_daemon_options(runtime: RuntimeOptions) -> None:
    """Refuse option combinations ``-daemonize`` cannot honour (stdio is closed)."""
    if runtime.daemonize and runtime.log_enabled and runtime.log_path is None:
        raise ConfigError("-D: logging to stderr is not allowed with -daemonize (stdio is"
                          " closed); give -D PATH")


def runtime_options(runtime: dict[str, Any]) -> RuntimeOptions:
    """Typed runtime options from the command line's runtime switches."""
    log = runtime.get("D")
    options = RuntimeOptions(
        name=runtime.get("name"),
        api_channel=qmp_socket(runtime),
        freeze=bool(runtime.get("freeze", False)),
        daemonize=bool(runtime.get("daemonize", False)),
        pidfile=runtime.get("pidfile"),
        seccomp=not runtime.get("disable-seccomp", False),
        log_path=log if isinstance(log, str) else None,
        log_enabled=log is not None,
        config_file=runtime.get("config"),
        qmp_rate=qmp_rate_from_env(),   # read here so that a bad value fails before KVM set-up
    )
    check_daemon_options(options)
    return options


def build_vm_config(document: dict[str, Any], runtime: RuntimeOptions) -> VmConfig:
    """The typed config from a merged, validated document."""
    machine = document.get("machine-config", {})
    boot = document.get("boot-source", {})
    kernel = boot.get("kernel_image_path")
    if not kernel:
        raise ConfigError("no kernel: give -kernel PATH (or boot-source.kernel_image_path)")
    return VmConfig(
        machine=MachineConfig(
            vcpus=machine.get("vcpu_count", 1),
            mem_size=machine.get("mem_size", layout.MIN_MEM),
            mem_path=machine.get("mem_path"),
            mem_share=machine.get("mem_share", False),
            dump_guest_core=machine.get("dump_guest_core", True),
            cpu_features={k: v for k, v in machine.get("cpu", {}).items() if k != "model"},
        ),
        boot=BootConfig(kernel=kernel, append=boot.get("boot_args", ""),
                        initrd=boot.get("initrd_fs_path")),
        iothreads=tuple(item["id"] for item in document.get("iothread", [])),
        runtime=runtime,
        document=document,
    )
