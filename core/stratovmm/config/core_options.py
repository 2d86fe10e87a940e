"""The core's own options (StratoVirt v0.3's machine, boot and process options, with 2.x's
spellings from ``v2options``) and its part of the JSON schema."""

from __future__ import annotations

from typing import Any

from stratovmm.boot import layout
from stratovmm.boot.cpu import KVM_FEATURES
from stratovmm.config.v2options import KVM_ACCEL, V2_OPTIONS, parse_ram, smp_fragment
from stratovmm.registry import OptionSpec, SubOption, ValueKind

S, P, N, B, Z = ValueKind.STR, ValueKind.PATH, ValueKind.INT, ValueKind.BOOL, ValueKind.SIZE

CORE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("config", "load the JSON config file (the command line overrides it)", "config",
               style="value", sub=(SubOption("path", "path", P),), file_key=False, metavar="PATH"),
    OptionSpec("name", "guest name (logs, QMP query-name)", "name", style="value",
               sub=(SubOption("name", "name", S),), file_key=False, metavar="NAME"),
    OptionSpec("machine", "machine type and memory options", "machine-config", implied="type",
               sub=(SubOption("type", "type", values={"microvm": "MicroVm"},
                              help="only microvm"),
                    SubOption("dump-guest-core", "dump_guest_core", B,
                              help="include guest RAM in core dumps (default on)"),
                    SubOption("mem-share", "mem_share", B,
                              help="map guest RAM MAP_SHARED (default off)"),
                    SubOption("accel", None, values=KVM_ACCEL, help="kvm (StratoVirt 2.x)"),
                    SubOption("usb", None, values={"off": False, "false": False},
                              help="off (StratoVirt 2.x)")),
               metavar="[type=]microvm[,dump-guest-core=on|off][,mem-share=on|off]"
                       "[,accel=kvm][,usb=off]"),
    OptionSpec("smp", "number of vCPUs, 1..254; StratoVirt 2.x's topology keys are checked"
               " as 2.x checks them", "machine-config", implied="cpus", build=smp_fragment,
               sub=(SubOption("cpus", "vcpu_count", N),
                    *(SubOption(key, None, N) for key in ("maxcpus", "sockets", "dies",
                                                          "clusters", "cores", "threads"))),
               metavar="[cpus=]N[,maxcpus=N][,sockets=N][,dies=N][,clusters=N][,cores=N]"
                       "[,threads=N]"),
    OptionSpec("cpu", "the host CPU; KVM paravirtual features on|off by QEMU's names"
               " (kvm-pv-ipi, kvm-pv-eoi, kvmclock, ...; default: all KVM offers)",
               "machine-config", implied="model", nest="cpu",
               sub=(SubOption("model", "model", values={"host": "host"}, help="only host"),
                    *(SubOption(name, name, B) for name in KVM_FEATURES)),
               metavar="[model=]host[,kvm-pv-ipi=on|off,...]"),
    OptionSpec("m", "guest RAM with a K/M/G suffix, 256M..512G (default 256M); a bare number"
               " is MiB up to 524288 (StratoVirt 2.x) and bytes from 268435456 (v0.3)",
               "machine-config", implied="size",
               sub=(SubOption("size", "mem_size", Z, parse=parse_ram),), metavar="[size=]SIZE"),
    OptionSpec("mem-path", "file or directory (e.g. hugetlbfs) backing guest RAM; absolute",
               "machine-config", style="value", sub=(SubOption("path", "mem_path", P),),
               metavar="PATH"),
    OptionSpec("kernel", "bzImage or ELF vmlinux (PVH note or 64-bit entry)", "boot-source",
               style="value", sub=(SubOption("path", "kernel_image_path", P),), metavar="PATH"),
    OptionSpec("append", "kernel command line (one quoted argument or several words)",
               "boot-source", style="words", sub=(SubOption("args", "boot_args", S),),
               metavar="ARGS..."),
    OptionSpec("initrd", "initial ramdisk", "boot-source", style="value",
               sub=(SubOption("path", "initrd_fs_path", P),), metavar="PATH"),
    OptionSpec("iothread", "an I/O thread devices can name with iothread=ID (repeatable)",
               "iothread", repeatable=True, id_field="id",
               sub=(SubOption("id", "id", S, required=True),), metavar="id=ID"),
    OptionSpec("api-channel", "QMP server on a unix socket (QEMU's ,server,nowait accepted)",
               "api-channel", style="value", sub=(SubOption("channel", "channel", S),),
               file_key=False, metavar="unix:PATH"),
    OptionSpec("freeze", "create the VM paused; QMP cont starts it", "freeze", style="flag",
               file_key=False),
    OptionSpec("S", "the same as -freeze (StratoVirt's and QEMU's short form)", "freeze",
               style="flag", file_key=False),
    OptionSpec("daemonize", "detach after set-up (forbids -serial stdio and logging to stdio)",
               "daemonize", style="flag", file_key=False),
    OptionSpec("pidfile", "write the pid here; removed on exit", "pidfile", style="value",
               sub=(SubOption("path", "path", P),), file_key=False, metavar="PATH"),
    OptionSpec("disable-seccomp", "run without the seccomp filter", "disable-seccomp",
               style="flag", file_key=False),
    OptionSpec("D", "log to PATH, or stderr (level: STRATOVMM_LOG_LEVEL, default error)", "D",
               style="optional", sub=(SubOption("path", "path", P),), file_key=False,
               metavar="[PATH]"),
    *V2_OPTIONS,
)

def whole_string(regex: str) -> str:
    """A JSON-schema ``pattern`` that matches only when ``regex`` matches the whole text.

    jsonschema applies ``pattern`` with ``re.search``, and Python's ``$`` also
    matches just before a final newline, so ``^[a-z]+$`` accepts ``"abc\\n"``.
    ``\\Z`` would fix that for Python but means a literal ``Z`` in ECMA-262, the
    dialect JSON Schema patterns are written in (``query-qmp-schema`` hands them
    to clients); ``$(?!\\n)`` is "end of text" in both.
    """
    return f"^(?:{regex})$(?!\\n)"


_ITEM_ID = {"type": "string", "minLength": 1, "pattern": whole_string("[A-Za-z0-9_.-]+"),
            "x-message": "must be letters, digits, '_', '.' or '-'"}

CORE_SCHEMA: dict[str, Any] = {
    "boot-source": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "kernel_image_path": {"type": "string", "minLength": 1},
            "boot_args": {"type": "string"},
            "initrd_fs_path": {"type": "string", "minLength": 1},
        },
    },
    "machine-config": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "type": {"enum": ["MicroVm"]},
            "vcpu_count": {"type": "integer", "minimum": 1, "maximum": layout.MAX_VCPUS},
            "mem_size": {"type": "integer", "minimum": layout.MIN_MEM,
                         "maximum": layout.MAX_MEM, "multipleOf": layout.PAGE_SIZE,
                         "x-unit": "size"},
            "mem_path": {"type": "string", "pattern": "^/",
                         "x-message": "must be an absolute path"},
            "dump_guest_core": {"type": "boolean"},
            "mem_share": {"type": "boolean"},
            "cpu": {
                "type": "object", "additionalProperties": False,
                "properties": {"model": {"enum": ["host"]},
                               **{name: {"type": "boolean"} for name in KVM_FEATURES}},
            },
        },
    },
    "iothread": {
        "type": "array",
        "items": {"type": "object", "additionalProperties": False, "required": ["id"],
                  "properties": {"id": _ITEM_ID}},
    },
}

ITEM_ID_SCHEMA = _ITEM_ID
