"""The core's StratoVirt 2.x spellings (tag v2.3.0, ``machine_manager/src/cmdline.rs`` and
``machine_manager/src/config/``), beside v0.3's in ``core_options``.

- ``-qmp unix:PATH,server,nowait`` and ``-mon chardev=ID,mode=control`` with a
  socket ``-chardev``: the QMP socket (``model.api_channel``).
- ``-chardev socket|stdio|file|pty,id=ID,...``: character back ends, held by id
  for the front ends that name them (``-mon``, ``-serial chardev:ID``,
  ``-device virtconsole``); a chardev is a host endpoint, not a device, and the
  core's ``-mon`` needs one, so the core reads them and each consumer says which
  kinds it can serve.
- ``-object iothread,id=ID``: ``-iothread id=ID``.
- ``-m`` with a bare number: MiB in 2.x, bytes in v0.3 (``parse_ram``).
- ``-smp``'s topology keys, checked as 2.x checks them (``smp_fragment``).
- ``-accel kvm`` and QEMU's options that 2.x accepts and ignores (``-uuid``,
  ``-nodefaults``, ...: ``can_no_value`` options, a value optional).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stratovmm.boot import layout
from stratovmm.config.grammar import parse_size
from stratovmm.registry import Join, OptionSpec, SubOption, ValueKind

MiB = 1 << 20
MAX_RAM_MIB = layout.MAX_MEM // MiB          # 524288: the largest bare -m read as MiB


def parse_ram(text: str) -> int:
    """``-m``'s size in bytes.  With a K/M/G suffix it is as written; a bare number is MiB
    in StratoVirt 2.x (``memory_unit_conversion``) and bytes in v0.3.  The two never
    overlap: a valid size in bytes (at least 256M = 268435456) is above the largest
    valid size in MiB (512G = 524288 MiB), so a bare number up to 524288 is MiB and
    one from 268435456 is bytes; one in between is neither and is refused."""
    stripped = text.strip()
    if not stripped.isdigit():
        return parse_size(text)
    number = int(stripped)
    if number <= MAX_RAM_MIB:
        return number * MiB
    if number >= layout.MIN_MEM:
        return number
    raise ValueError(f"a bare number is MiB up to {MAX_RAM_MIB} (StratoVirt 2.x) or bytes from"
                     f" {layout.MIN_MEM} (v0.3), and {number} is neither; add M or G")


SMP_TOPOLOGY = ("sockets", "dies", "clusters", "cores", "threads")


def smp_fragment(values: Mapping[str, Any]) -> dict[str, Any]:
    """``-smp``: the vCPU count, with 2.x's topology rules (``add_cpu`` and
    ``adjust_topology``): a topology key is at least 1, sockets * dies * clusters *
    cores * threads equals maxcpus, and cpus <= maxcpus <= 254.  The guest sees the
    ``cpus`` vCPUs as cores of one socket whatever the topology says (2.x reads it to
    answer libvirt); CPUs up to maxcpus are not created, as nothing can hot-add them."""
    if "cpus" not in values:
        raise ValueError("missing cpus= (the number of vCPUs)")
    cpus = int(values["cpus"])
    for key in (*SMP_TOPOLOGY, "maxcpus"):
        if key in values and values[key] < 1:
            raise ValueError(f"{key}={values[key]} is below the minimum 1")
    given = {key: int(values[key]) for key in SMP_TOPOLOGY if key in values}
    if given or "maxcpus" in values:
        _check_topology(cpus, int(values.get("maxcpus", 0)), given)
    return {"vcpu_count": cpus}


def _check_topology(cpus: int, maxcpus: int, given: dict[str, int]) -> None:
    """2.x's ``adjust_topology``: missing counts are derived, then the product must match."""
    sockets, cores, threads = (given.get(k, 0) for k in ("sockets", "cores", "threads"))
    dies, clusters = given.get("dies", 1), given.get("clusters", 1)
    if maxcpus == 0:
        product = sockets * dies * clusters * cores * threads
        maxcpus = product if product > 0 else cpus
    if cores == 0:
        sockets, threads = sockets or 1, threads or 1
        cores = maxcpus // (sockets * dies * clusters * threads)
    elif sockets == 0:
        threads = threads or 1
        sockets = maxcpus // (dies * clusters * cores * threads)
    if threads == 0:
        threads = maxcpus // (sockets * dies * clusters * cores)
    if not cpus <= maxcpus <= layout.MAX_VCPUS:
        raise ValueError(f"maxcpus={maxcpus} must be at least cpus ({cpus}) and at most"
                         f" {layout.MAX_VCPUS}")
    if sockets * dies * clusters * cores * threads != maxcpus:
        raise ValueError(f"sockets * dies * clusters * cores * threads = {sockets} * {dies} *"
                         f" {clusters} * {cores} * {threads} must equal maxcpus ({maxcpus})")


def mon_socket(values: Mapping[str, Any], chardev: Mapping[str, Any]) -> dict[str, Any]:
    """``-mon chardev=ID,mode=control``: QMP on the chardev's socket, which must listen and
    not wait (2.x's ``check_api_channel``)."""
    ident = values["chardev"]
    if chardev["kind"] != "socket":
        raise ValueError(f"chardev {ident!r} is {chardev['kind']}; QMP needs a socket (-chardev"
                         f" socket,id={ident},path=PATH,server,nowait)")
    if not (chardev.get("server") and chardev.get("nowait")):
        raise ValueError(f"chardev {ident!r} needs both server and nowait (the QMP socket"
                         " listens and does not wait for a client)")
    return {"path": chardev["path"]}


_CHARDEV_HELP = "a character back end (for -mon, -serial chardev:ID, -device virtconsole)"


def _chardev(kind: str, *sub: SubOption, metavar: str, what: str = "") -> OptionSpec:
    return OptionSpec("chardev", f"{_CHARDEV_HELP}: {what or kind}", "chardev", driver=kind,
                      backend=True, file_key=False, repeatable=True, id_field="id",
                      sub=(SubOption("id", "id", required=True), *sub), metavar=metavar)


_SERVER = (SubOption("server", "server", ValueKind.FLAG, help="listen (required by its users)"),
           SubOption("nowait", "nowait", ValueKind.FLAG, help="do not wait for a client"))

CHARDEV_OPTIONS = (
    _chardev("socket", SubOption("path", "path", ValueKind.PATH, required=True), *_SERVER,
             metavar="id=ID,path=SOCKET[,server][,nowait]"),
    _chardev("stdio", metavar="id=ID"),
    _chardev("file", SubOption("path", "path", ValueKind.PATH, required=True),
             metavar="id=ID,path=FILE"),
    _chardev("pty", metavar="id=ID",
             what="pty (a new pseudo-terminal; its path is printed at start-up)"),
)

IGNORED_HELP = "accepted and ignored, as StratoVirt 2.x does (QEMU compatibility)"

# StratoVirt 2.x's hidden can_no_value options: a value may follow, and nothing is done.
IGNORED_OPTIONS = tuple(
    OptionSpec(name, IGNORED_HELP, f"ignored-{name}", style="optional", file_key=False,
               sub=(SubOption("value", None),), metavar="[VALUE]")
    for name in ("uuid", "no-user-config", "nodefaults", "nographic", "sandbox", "msg", "rtc",
                 "boot", "realtime", "overcommit", "display")
)

KVM_ACCEL = {"kvm": "kvm", "kvm:tcg": "kvm"}      # 2.x also takes kvm:tcg (libvirt's spelling)

V2_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("qmp", "QMP server on a unix socket (StratoVirt 2.x's -api-channel)", "qmp",
               style="value", sub=(SubOption("channel", "channel"),), file_key=False,
               metavar="unix:PATH,server,nowait"),
    OptionSpec("mon", "QMP server on a socket -chardev", "mon", file_key=False,
               sub=(SubOption("chardev", None, required=True, help="a -chardev socket id"),
                    SubOption("mode", None, required=True, values={"control": "control"},
                              help="control (QMP)"),
                    SubOption("id", None, help="the monitor's name (not used)")),
               join=Join("chardev", "chardev", mon_socket),
               metavar="chardev=ID,mode=control[,id=ID]"),
    *CHARDEV_OPTIONS,
    OptionSpec("object", "an I/O thread (the same as -iothread id=ID)", "iothread",
               driver="iothread", repeatable=True, id_field="id",
               sub=(SubOption("id", "id", required=True),), metavar="id=ID"),
    OptionSpec("accel", "the accelerator: only kvm", "accel", style="value", file_key=False,
               sub=(SubOption("accel", None, values=KVM_ACCEL),), metavar="kvm"),
    *IGNORED_OPTIONS,
)
