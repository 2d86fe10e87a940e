"""The seccomp allow-list and filter, in child processes (a loaded filter cannot be undone).

No KVM: each test starts a Python child that loads the core's filter (as the
VMM does right before its vCPUs run) and then does one thing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stratovmm import cli
from stratovmm.errors import PluginError
from stratovmm.host import sandbox
from stratovmm.machine import seccomp
from stratovmm.registry import SeccompRules

pyseccomp = pytest.importorskip("pyseccomp")

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ERROR \[(?:\S+ )?tid \d+\]"
                      r" stratovmm\.host\.sandbox: seccomp: forbidden system call (\S+) \((\d+)\)",
                      re.M)

PRELUDE = """
import ctypes, os, signal, socket, sys, threading, time
from stratovmm.host import sandbox
from stratovmm.host.logsetup import setup_logging
setup_logging(None)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.syscall.argtypes = [ctypes.c_long] * 4
rules = sandbox.core_rules()
{rules}
REPORTER = {reporter}
if REPORTER:    # as the VMM does: libseccomp's program, compiled now or kept from a run before
    sandbox.prepare(rules).apply()
else:           # without the C helper: pyseccomp's filter, loaded by libseccomp
    sandbox.Sandbox(rules, sandbox.build_filter(rules, False)).apply()
"""


# the rules stratovmm collects from installed plugins NAMES (QMP: with -api-channel)
PLUGIN_RULES = """
import importlib
from stratovmm.cli import core_registry
from stratovmm.config.load import load_config
from stratovmm.plugin import PluginHost
host = PluginHost({{name: importlib.import_module(f"stratovmm_{{name}}.plugin")
                   for name in {names!r}}})
registry = host.register(core_registry())
config = load_config(["-kernel", "k"] + (["-api-channel", "unix:qmp.sock"] if {qmp!r} else []),
                     registry.devices)
host.check_config(config.document, config.runtime)
from stratovmm.machine.seccomp import collect_rules
rules = collect_rules(host, registry, config)
"""


def run_filtered(body: str, tmp_path: Path, reporter: bool = True, setup: str = "",
                 rules: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``setup``, load the core filter (with ``rules``' code run on the core's rules
    first), run ``body``; no core file is left behind."""
    script = (textwrap.dedent(setup) + PRELUDE.format(reporter=reporter, rules=rules)
              + textwrap.dedent(body))
    env = {**os.environ, "STRATOVMM_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env=env,
                          preexec_fn=lambda: __import__("resource").setrlimit(
                              __import__("resource").RLIMIT_CORE, (0, 0)))


def killed_by_sigsys(proc: subprocess.CompletedProcess[str], name: str) -> None:
    """Assert the child died of SIGSYS after logging that ``name`` was forbidden."""
    assert proc.returncode == -signal.SIGSYS, (proc.returncode, proc.stdout, proc.stderr)
    m = LOG_LINE.search(proc.stderr)
    assert m is not None, proc.stderr
    assert m.group(1) == name


# -- the allow-list ---------------------------------------------------------------------------


def test_every_core_syscall_exists_on_this_architecture() -> None:
    """Each name in the core list is a real system call here (a typo would allow nothing)."""
    for names in sandbox.CORE_SYSCALLS.values():
        for name in names:
            assert pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0, name


def test_core_list_names_each_syscall_once() -> None:
    """No system call sits in two groups (each has one stated reason)."""
    names = [n for group in sandbox.CORE_SYSCALLS.values() for n in group]
    assert len(names) == len(set(names))


def test_plugin_rules_merge_after_the_core_and_name_their_plugin() -> None:
    """A plugin's calls join the core's; a call both declare stays attributed to the core."""
    rules = sandbox.core_rules()
    rules = rules.view("blk")
    rules.allow("read", "pwritev", "fdatasync")
    rules.allow_ioctl(0x1234)
    assert rules.syscalls["read"] == "core"
    assert rules.syscalls["pwritev"] == "blk"
    assert rules.ioctls[0x1234] == "blk"
    assert rules.ioctls[sandbox.CORE_IOCTLS["KVM_RUN"]] == "core"


def test_unknown_syscall_name_is_an_error_naming_the_plugin() -> None:
    """A misspelled call in a plugin's rules stops start-up and says which plugin."""
    rules = sandbox.core_rules()
    rules = rules.view("netdev")
    rules.allow("sendmmsgg")
    with pytest.raises(PluginError, match=r"plugin netdev.*'sendmmsgg'"):
        sandbox.build_filter(rules, reporter=True)


def test_reporter_names_table_maps_numbers_to_names() -> None:
    """The SIGSYS reporter's table has each call's name at its number."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    from stratovmm.host._sandbox import lib

    table = sandbox.syscall_names()
    width = lib.SVMM_NAME_WIDTH
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "socket")
    assert table[number * width : (number + 1) * width].rstrip(b"\0") == b"socket"


# -- the filter at work ------------------------------------------------------------------------

WORKLOAD_SETUP = """
import os, select, socket, sys
a, b = socket.socketpair()
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
listener.bind("qmp.sock")
listener.listen(1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect("qmp.sock")
epoll = select.epoll()
"""

WORKLOAD = """
import logging
t = threading.Thread(target=lambda: time.sleep(0.01), name="worker")
t.start()
t.join()
efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
epoll.register(efd, select.EPOLLIN)
os.eventfd_write(efd, 1)
assert epoll.poll(1)
os.eventfd_read(efd)
conn, _ = listener.accept()
conn.setblocking(False)
client.sendall(b"{}")
time.sleep(0.05)
assert conn.recv(8) == b"{}"
socket.send_fds(b, [b"y"], [efd])
_msg, fds, _flags, _addr = socket.recv_fds(a, 8, 4)
os.close(fds[0])
signal.signal(signal.SIGTERM, lambda *_: None)
signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("workload").exception("a traceback while the filter is on")
import json.tool, email.message
big = bytearray(1 << 20)
big += bytearray(8 << 20)
del big
assert libc.syscall(435, 0, 0, 0) == -1 and ctypes.get_errno() == 38   # clone3: ENOSYS
assert libc.syscall(16, a.fileno(), 0xFFFFFFFF_00005401, 0) == -1      # TCGETS, high bits set
os.unlink("qmp.sock")
print("WORKLOAD-OK", flush=True)
"""


def test_what_the_core_does_after_setup_passes_the_filter(tmp_path: Path) -> None:
    """Threads, epoll/eventfd, QMP socket I/O with fds, signals, tracebacks, lazy imports,
    big reallocations and unlink all work under the core list alone."""
    proc = run_filtered(WORKLOAD, tmp_path, setup=WORKLOAD_SETUP)
    assert proc.returncode == 0, proc.stderr
    assert "WORKLOAD-OK" in proc.stdout
    assert "ValueError: boom" in proc.stderr


def test_jsonschema_words_an_error_under_the_filter(tmp_path: Path) -> None:
    """A QMP client's first invalid arguments import jsonschema while the filter is on
    (uuid asks uname on import); the error is worded and the process lives on."""
    proc = run_filtered("""
from stratovmm.config import schema
validator = schema.Validator({"type": "object", "required": ["x"],
                              "properties": {"x": {"type": "integer"}}})
print(schema.problem(validator, {"x": 1.0}, schema.under("probe")), flush=True)
print("JSONSCHEMA-OK", flush=True)
""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "JSONSCHEMA-OK" in proc.stdout and "probe" in proc.stdout


@pytest.mark.parametrize(("body", "name"), [
    ("socket.socket(socket.AF_INET, socket.SOCK_STREAM)", "socket"),
    ("os.fork()", "clone"),
    ("open('written', 'w')", "openat"),
    ("signal.signal(signal.SIGSYS, signal.SIG_IGN)", "rt_sigaction"),
    ("libc.syscall(234, 1, 1, 0)", "tgkill"),
    ("libc.syscall(13, (1 << 32) | 31, 0, 0, 8)", "rt_sigaction"),   # SIGSYS, high bits set
    ("os.execv('/bin/true', ['true'])", "execve"),
    ("threading.Thread(target=lambda: socket.socket()).start(); time.sleep(5)", "socket"),
])
def test_forbidden_call_kills_with_a_log_line_naming_it(tmp_path: Path, body: str,
                                                        name: str) -> None:
    """A call outside the list (or outside its allowed arguments) is logged and kills."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    proc = run_filtered(body + "\nprint('SURVIVED', flush=True)\n", tmp_path)
    killed_by_sigsys(proc, name)
    assert "SURVIVED" not in proc.stdout
    assert not (tmp_path / "written").exists()


def test_a_kept_program_filters_as_a_fresh_one(tmp_path: Path) -> None:
    """The second start with the same rules loads the program kept by the first (no
    pyseccomp import), and it filters the same: the workload passes, a socket kills."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    probe = "print('PYSECCOMP', 'pyseccomp' in sys.modules, flush=True)\n"
    first = run_filtered(probe + "socket.socket()\n", tmp_path)
    killed_by_sigsys(first, "socket")
    assert "PYSECCOMP True" in first.stdout
    assert len(list((tmp_path / "cache").glob("seccomp-*.marshal"))) == 1
    second = run_filtered(probe + "socket.socket()\n", tmp_path)
    killed_by_sigsys(second, "socket")
    assert "PYSECCOMP False" in second.stdout
    workload = run_filtered(WORKLOAD, tmp_path, setup=WORKLOAD_SETUP)
    assert workload.returncode == 0, workload.stderr
    assert "WORKLOAD-OK" in workload.stdout


def test_ioctl_outside_the_list_kills_and_names_the_request(tmp_path: Path) -> None:
    """ioctl is allowed only for listed requests: FIONREAD kills, and the log gives the request."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    proc = run_filtered("fcntl.ioctl(r, termios.FIONREAD, b'0000')\n", tmp_path,
                        setup="import fcntl, os, termios\nr, w = os.pipe()\n")
    killed_by_sigsys(proc, "ioctl")
    assert "request 0x541b" in proc.stderr


def test_without_the_reporter_the_kernel_kills_the_process(tmp_path: Path) -> None:
    """The fallback filter (no C reporter) kills with SIGSYS too, through KILL_PROCESS."""
    proc = run_filtered("socket.socket()\nprint('SURVIVED', flush=True)\n", tmp_path,
                        reporter=False)
    assert proc.returncode == -signal.SIGSYS, proc.stderr
    assert "SURVIVED" not in proc.stdout


def test_filter_covers_threads_started_before_it(tmp_path: Path) -> None:
    """TSYNC: a thread that existed before the filter was loaded is filtered too."""
    setup = """
import os, socket, threading
go = threading.Event()
def late():
    go.wait()
    socket.socket()
    print("SURVIVED", flush=True)
worker = threading.Thread(target=late, daemon=True)
worker.start()
print("PID", os.getpid(), flush=True)
"""
    proc = run_filtered("go.set()\nworker.join(5)\n", tmp_path, setup=setup)
    killed_by_sigsys(proc, "socket")
    assert "SURVIVED" not in proc.stdout
    tid = re.search(r" tid (\d+)\]", proc.stderr)
    pid = re.search(r"PID (\d+)", proc.stdout)
    assert tid is not None and pid is not None
    assert tid.group(1) != pid.group(1)      # not the main thread that loaded the filter


def test_syscall_count_is_the_number_of_distinct_calls() -> None:
    """``Sandbox.syscall_count`` counts each allowed call once, conditional or not."""
    rules = sandbox.core_rules()
    box = sandbox.Sandbox(rules, None)
    names = {n for group in sandbox.CORE_SYSCALLS.values() for n in group} | {"ioctl"}
    assert box.syscall_count == len(names)


def test_core_ioctls_include_every_kvm_request_the_vcpu_loop_needs() -> None:
    """KVM_RUN and the irqfd/ioeventfd requests are on the list (the VM needs them after set-up)."""
    from stratovmm.kvm._kvm import lib

    for request in (lib.KVM_RUN, lib.KVM_IRQFD, lib.KVM_IOEVENTFD):
        assert request in sandbox.CORE_IOCTLS.values()


def test_collect_rules_adds_each_plugins_rules_after_the_core() -> None:
    """``collect_rules`` runs every loaded plugin's ``vmm_seccomp_rules`` after the core's list."""
    import types

    from stratovmm.config.load import load_config
    from stratovmm.plugin import PluginHost, hookimpl
    from stratovmm.registry import Registry

    @hookimpl
    def vmm_seccomp_rules(rules: SeccompRules) -> None:
        rules.allow("pwritev", "futex")

    module = types.ModuleType("fake_blk")
    module.STRATOVMM_API = "1.1"  # type: ignore[attr-defined]
    module.vmm_seccomp_rules = vmm_seccomp_rules  # type: ignore[attr-defined]
    registry = Registry()
    config = load_config(["-kernel", "k"], cli.core_registry().devices)
    rules = seccomp.collect_rules(PluginHost({"fake-blk": module}), registry, config)
    assert rules.syscalls["pwritev"] == "fake-blk"
    assert rules.syscalls["futex"] == "core"


def test_documented_count_matches_the_core_list() -> None:
    """The count the module docstring (and README) gives is the core list's real size."""
    count = len(sandbox.core_rules().syscalls)
    assert f"The core allows {count} calls where StratoVirt allows 39" in (sandbox.__doc__ or "")


# -- plugins' rules combine with the core's, never lift them ----------------------------------

LIFTER_RULES = """
rules = rules.view("lifter")
rules.allow("openat", "clone", "rt_sigaction", "tgkill", "prctl")
"""


@pytest.mark.parametrize(("body", "name"), [
    ("open('written', 'w')", "openat"),
    ("os.fork()", "clone"),
    ("signal.signal(signal.SIGSYS, signal.SIG_IGN)", "rt_sigaction"),
    ("libc.syscall(234, 1, 1, 0)", "tgkill"),
])
def test_plugin_allowing_a_conditioned_call_by_name_does_not_lift_the_condition(
        tmp_path: Path, body: str, name: str) -> None:
    """A plugin's bare ``allow("openat", "clone", ...)`` means the core's rule: writing opens,
    forks, replacing the SIGSYS reporter and signalling other processes still kill."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    proc = run_filtered(body + "\nprint('SURVIVED', flush=True)\n", tmp_path,
                        rules=LIFTER_RULES)
    killed_by_sigsys(proc, name)
    assert "SURVIVED" not in proc.stdout
    assert not (tmp_path / "written").exists()


def test_blk_with_qmp_opens_existing_images_read_write_but_never_creates_or_truncates(
        tmp_path: Path) -> None:
    """blk's rule for blockdev-add: O_RDWR (and O_DIRECT...) on an existing file passes; the
    same open with O_CREAT, O_TRUNC or O_WRONLY kills, and the file is left as it was."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    pytest.importorskip("stratovmm_blk")
    (tmp_path / "disk.img").write_bytes(b"data")
    rules = PLUGIN_RULES.format(names=("blk",), qmp=True)
    ok = run_filtered("os.close(os.open('disk.img', os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK))\n"
                      "print('OPENED', flush=True)\n", tmp_path, rules=rules)
    assert ok.returncode == 0 and "OPENED" in ok.stdout, ok.stderr
    for flags in ("os.O_RDWR | os.O_CREAT", "os.O_RDWR | os.O_TRUNC", "os.O_WRONLY"):
        name = "created.img" if "CREAT" in flags else "disk.img"
        proc = run_filtered(f"os.open({name!r}, {flags}, 0o644)\nprint('SURVIVED')\n",
                            tmp_path, rules=rules)
        killed_by_sigsys(proc, "openat")
        assert "SURVIVED" not in proc.stdout
    assert not (tmp_path / "created.img").exists()
    assert (tmp_path / "disk.img").read_bytes() == b"data"


def test_blk_without_qmp_adds_no_open(tmp_path: Path) -> None:
    """With drives but no -api-channel nothing opens images later: blk's rules leave openat at
    the core's read-only rule."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    pytest.importorskip("stratovmm_blk")
    (tmp_path / "disk.img").write_bytes(b"data")
    proc = run_filtered("os.open('disk.img', os.O_RDWR)\nprint('SURVIVED')\n", tmp_path,
                        rules=PLUGIN_RULES.format(names=("blk",), qmp=False))
    killed_by_sigsys(proc, "openat")


def test_vsock_makes_unix_stream_sockets_only(tmp_path: Path) -> None:
    """vsock's rule: socket(AF_UNIX, SOCK_STREAM|flags) passes; AF_INET, AF_NETLINK, a unix
    datagram socket and AF_UNIX with high bits set in the family kill."""
    if not sandbox.reporter_available():
        pytest.skip("stratovmm.host._sandbox is not built")
    pytest.importorskip("stratovmm_vsock")
    rules = PLUGIN_RULES.format(names=("vsock",), qmp=False)
    ok = run_filtered("socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK"
                      " | socket.SOCK_CLOEXEC).close()\nprint('MADE', flush=True)\n",
                      tmp_path, rules=rules)
    assert ok.returncode == 0 and "MADE" in ok.stdout, ok.stderr
    for call in ("socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
                 "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)",
                 "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
                 "libc.syscall(41, (1 << 32) | socket.AF_UNIX, socket.SOCK_STREAM, 0)"):
        proc = run_filtered(f"{call}\nprint('SURVIVED')\n", tmp_path, rules=rules)
        killed_by_sigsys(proc, "socket")
        assert "SURVIVED" not in proc.stdout


# -- the rules object --------------------------------------------------------------------------


def test_rules_combine_as_alternatives_and_core_conditions_hold() -> None:
    """A call's rules are alternatives; a plugin's bare rule for a core-conditioned call adds
    nothing, its conditioned rule adds one alternative; for other calls a bare rule wins."""
    from stratovmm.registry import ArgCondition

    rules = sandbox.core_rules()
    read_write = ArgCondition(2, "masked_eq", 0, 0o1101)
    rules = rules.view("a")
    rules.allow("openat", "pwritev")
    rules.allow("openat", when=[read_write])
    rules = rules.view("b")
    rules.allow("pwritev", when=[ArgCondition(0, "eq", 3)])
    rules.allow("openat", when=[read_write])
    core_open = sandbox.core_conditions()["openat"]
    assert rules.conditions("openat") == [*core_open, (read_write,)]
    assert rules.held_to_core("openat") == ["a"]
    assert rules.conditions("pwritev") is None
    assert rules.conditions("read") is None
    assert rules.owners["openat"] == {"core", "a", "b"}


@pytest.mark.parametrize(("fields", "message"), [
    ((6, "eq", 1, 0), "arg must be 0..5"),
    ((0, "ne", 1, 0), "op must be one of eq, lt, le, masked_eq"),
    ((0, "masked_eq", 3, 1), "bits outside the mask"),
    ((0, "eq", 1 << 64, 0), "must fit 64 bits"),
])
def test_bad_condition_is_a_plugin_error_naming_the_plugin(fields: tuple[int, str, int, int],
                                                          message: str) -> None:
    """A condition the filter cannot express safely (or that is never true) stops start-up."""
    from stratovmm.registry import ArgCondition

    rules = SeccompRules()
    rules = rules.view("netdev")
    with pytest.raises(PluginError, match=f"^plugin netdev: .*{message}"):
        rules.allow("socket", when=[ArgCondition(*fields)])


def test_two_conditions_on_one_argument_are_refused() -> None:
    """libseccomp takes one condition per argument in a rule: refused at registration, with
    the plugin's name, instead of failing when the filter is built."""
    from stratovmm.registry import ArgCondition

    rules = SeccompRules()
    rules = rules.view("x")
    with pytest.raises(PluginError, match=r"^plugin x: .*socket checks one argument twice"):
        rules.allow("socket", when=[ArgCondition(0, "le", 9), ArgCondition(0, "eq", 1)])


def test_ioctl_with_conditions_is_refused() -> None:
    """ioctl is limited by request number only (allow_ioctl)."""
    from stratovmm.registry import ArgCondition

    rules = SeccompRules()
    rules = rules.view("x")
    with pytest.raises(PluginError, match="use allow_ioctl"):
        rules.allow("ioctl", when=[ArgCondition(1, "eq", 1)])


# -- what a VM's filter holds, per configured device set ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("balloon", "blk", "console", "net", "rng", "serial", "vsock")
EVERY_DEVICE = ("-serial", "stdio", "-drive", "id=d0,file=/x.img", "-netdev",
                "id=n0,netdev=tap0", "-chardev", "id=c0,path=/tmp/c.sock", "-device",
                "vsock,id=v0,guest-cid=3,uds-path=/tmp/v.sock", "-balloon",
                "deflate-on-oom=on", "-rng", "random_file=/dev/urandom")
QMP = ("-api-channel", "unix:/tmp/q.sock")
# README row -> command lines that must give the count the row states
DEVICE_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "no devices, or `-serial stdio` only": ((), ("-serial", "stdio")),
    "`-drive`": (("-drive", "id=d0,file=/x.img"),),
    "`-drive` (or none) with `-api-channel`": (("-drive", "id=d0,file=/x.img", *QMP), QMP),
    "one of every device type": (EVERY_DEVICE,),
    "one of every device type, with `-api-channel`": ((*EVERY_DEVICE, *QMP),),
}


def filter_rules(args: tuple[str, ...]) -> SeccompRules:
    """The rules ``stratovmm ARGS`` would load, with the shipped plugins (as ``prepare``)."""
    import importlib

    from stratovmm.cli import core_registry
    from stratovmm.config.load import load_config
    from stratovmm.plugin import PluginHost

    for name in SHIPPED:
        pytest.importorskip(f"stratovmm_{name}")
    host = PluginHost({n: importlib.import_module(f"stratovmm_{n}.plugin") for n in SHIPPED})
    registry = host.register(core_registry())
    config = load_config(["-kernel", "k", *args], registry.devices)
    host.check_config(config.document, config.runtime)
    return seccomp.collect_rules(host, registry, config, seccomp.idle_plugins(registry, config))


@pytest.mark.parametrize("row", sorted(DEVICE_SETS))
def test_readme_states_the_syscall_count_of_each_device_set(row: str) -> None:
    """The README's table gives, per configured device set, the number of calls the filter
    really allows (computed here as the VMM computes it; printed with -s)."""
    counts = {len(filter_rules(args).syscalls) for args in DEVICE_SETS[row]}
    assert len(counts) == 1, counts
    (count,) = counts
    print(f"{row}: {count} system calls")
    assert f"| {row} | {count} |" in (ROOT / "README.md").read_text()


def test_only_plugins_in_use_contribute_rules() -> None:
    """blk's, vsock's and net's calls are in the filter only when their devices are
    configured (or, for blk and net, QMP can hot-plug them)."""
    bare, with_qmp = filter_rules(()), filter_rules(QMP)
    every = filter_rules(EVERY_DEVICE)
    assert "pwritev" not in bare.syscalls and "socket" not in bare.syscalls
    assert "pwritev" in with_qmp.syscalls and "readv" in with_qmp.syscalls
    assert "socket" not in with_qmp.syscalls           # vsock has no hotplug driver
    assert {"pwritev", "socket", "readv"} <= set(every.syscalls)
    assert bare.conditions("openat") == list(sandbox.core_conditions()["openat"])
    assert len(with_qmp.conditions("openat") or []) == 2     # core read-only, blk read-write
