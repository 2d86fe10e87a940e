"""QMP fuzzing against a running VM: hypothesis writes malformed and hostile messages
(random bytes, truncated and over-size JSON, deep nesting, huge strings, wrong argument
types for every command of ``query-qmp-schema``, unknown commands, random ids, fds by
SCM_RIGHTS) to the VM's QMP socket.

Every message must be answered: the test feeds the same bytes to a local
``JsonStreamSplitter`` (the framing oracle), expects exactly one reply per complete JSON
value, in order, with the request's id echoed, and an error for every request it knows
is schema-invalid (so no handler ran).  The VM runs the Linux test guest, which must keep
running and printing a counter; the VMM's own resident memory (guest RAM left out) and its
open fds must stay bounded.

``STRATOVMM_QMP_FUZZ_MESSAGES`` sets the number of messages (default 10,000).  The VM
admits ``VM_QMP_RATE`` commands per second (``STRATOVMM_QMP_RATE``; 100 by default, which
would make this a 100-second test), and the fuzzer paces its JSON objects to stay under
that rate so that they reach the schema check instead of being throttled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from procvm import guest_ram_mapping
from qmp_vm import VmProcess
from qmpfuzz import FD_NAMES, Expected, Msg, expected_replies, messages

from stratovmm.qmp.errors import ERROR_CLASSES
from stratovmm.testing.guest import GUEST_TIMEOUT, boot_args
from stratovmm.testing.qmp import QmpTestClient, connect_unix

MESSAGES = int(os.environ.get("STRATOVMM_QMP_FUZZ_MESSAGES", "10000"))
WARMUP_MESSAGES = 600
VM_QMP_RATE = 1000
REQUESTS_PER_SECOND = 950    # the client's pace for JSON objects (a little under the VM's)
REQUEST_BURST = 40
REPLY_TIMEOUT = 15.0
# RSS growth allowed over the whole run (after a warm-up): one client's worst case is
# MAX_MESSAGE_BYTES of input, 1 MiB of unread output and one 64 KiB read's worth of parsed
# frames, and a client is served at a time here; the rest is allocator slack.  A leak of
# even 1 KiB per message would exceed it (10,000 messages -> 10 MiB).
RSS_GROWTH_LIMIT_KIB = 8 * 1024

GUEST_MEM, GUEST_MEM_BYTES = "256M", 256 << 20
# The guest's counter: a line a second, so the fuzz can check the guest still runs.
COUNTER = 'i=0; while true; do echo "TICK $i"; i=$((i+1)); sleep 1; done'


class Pacer:
    """The client's own leaky bucket, a little under the server's."""

    def __init__(self) -> None:
        self.level = 0.0
        self.last = time.monotonic()

    def wait_for(self, commands: int) -> None:
        """Sleep until ``commands`` more fit in the bucket, then pour them."""
        while True:
            now = time.monotonic()
            self.level = max(0.0, self.level - (now - self.last) * REQUESTS_PER_SECOND)
            self.last = now
            if self.level + commands <= max(REQUEST_BURST, commands):
                self.level += commands
                return
            time.sleep((self.level + commands - REQUEST_BURST) / REQUESTS_PER_SECOND + 0.001)


def open_fds(count: int) -> list[int]:
    """``count`` fds of a few kinds (/dev/null, pipe ends) to pass with SCM_RIGHTS."""
    fds: list[int] = []
    while len(fds) < count:
        if len(fds) % 3 == 2:
            fds.extend(os.pipe())
        else:
            fds.append(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
    for extra in fds[count:]:
        os.close(extra)
    return fds[:count]


def pump(sock: socket.socket, batch: list[Msg], replies: int, half_close: bool
         ) -> list[dict[str, Any]]:
    """Write the batch (fds as SCM_RIGHTS with their message) while reading; return the
    first ``replies`` non-event replies (or, with ``half_close``, every reply up to EOF)."""
    sock.setblocking(False)
    queue = list(batch)
    current = b""
    fds: list[int] = []
    inbuf = b""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + REPLY_TIMEOUT
    sent_all = False
    try:
        while True:
            if not current and queue:
                msg = queue.pop(0)
                current, fds = msg.data, open_fds(msg.fds)
            if not current and not queue and not sent_all:
                sent_all = True
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            done = sent_all and not half_close and len(got) >= replies
            if done:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(got)} of {replies} replies within"
                                     f" {REPLY_TIMEOUT} s; batch kinds {[m.kind for m in batch]}")
            readable, writable, _ = select.select([sock], [sock] if current else [], [],
                                                  remaining)
            if writable:
                try:
                    if fds:
                        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      b"".join(fd.to_bytes(4, "little") for fd in fds))]
                        sent = sock.sendmsg([current[:65536]], ancillary)
                    else:
                        sent = sock.send(current[:65536])
                except BlockingIOError:
                    sent = 0
                if sent:
                    current = current[sent:]
                    for fd in fds:
                        os.close(fd)
                    fds = []
            if readable:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    assert half_close and sent_all, "the server hung up"
                    return got
                inbuf += chunk
                *lines, inbuf = inbuf.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    assert isinstance(message, dict) and line.endswith(b"\r"), line[:200]
                    if "event" not in message:
                        got.append(message)
    finally:
        for fd in fds:
            os.close(fd)


def check_reply(reply: dict[str, Any], expected: Expected) -> None:
    """One reply matches its request: return or error, the id echoed, schema refusals."""
    context = f"{expected.msg!r} -> {json.dumps(reply)[:300]}"
    assert ("return" in reply) != ("error" in reply), context
    if "error" in reply:
        assert reply["error"]["class"] in ERROR_CLASSES, context
        assert isinstance(reply["error"]["desc"], str), context
    if expected.has_id:
        assert "id" in reply and reply["id"] == expected.request_id, context
    else:
        assert "id" not in reply, context
    if expected.must_fail:
        assert "error" in reply, f"schema-invalid request was run: {context}"


@dataclasses.dataclass
class Stats:
    """What the fuzzer did."""

    messages: int = 0
    replies: int = 0
    commands: int = 0
    throttled: int = 0
    refused: int = 0
    connections: int = 0
    fds_passed: int = 0
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)


def run_connection(path: str, batch: list[Msg], mode: str, pacer: Pacer, stats: Stats) -> None:
    """One connection: greeting, the batch, every reply checked, then close as ``mode``."""
    expected, commands = expected_replies(batch)
    pacer.wait_for(commands)
    sock = connect_unix(path, 10)
    try:
        sock.settimeout(REPLY_TIMEOUT)
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = sock.recv(1)
            assert chunk, "no greeting"
            greeting += chunk
        assert "QMP" in json.loads(greeting)
        got = pump(sock, batch, len(expected), mode == "half-close")
        assert len(got) == len(expected), (len(got), len(expected), [m.kind for m in batch])
        for reply, exp in zip(got, expected, strict=True):
            check_reply(reply, exp)
        if mode == "abrupt":
            sock.setblocking(True)
            sock.sendall(b'{"execute":"query-status","arguments":{"x":"unfinished')
    finally:
        sock.close()
    stats.connections += 1
    stats.messages += len(batch)
    stats.replies += len(got)
    stats.commands += commands
    stats.throttled += sum(1 for r in got if r.get("error", {}).get("class")
                           == "OperationThrottled")
    stats.refused += sum(1 for r, e in zip(got, expected, strict=True) if e.must_fail
                         and r["error"]["class"] != "OperationThrottled")
    stats.fds_passed += sum(m.fds for m in batch)
    for msg in batch:
        stats.kinds[msg.kind] = stats.kinds.get(msg.kind, 0) + 1


# -- the VM ---------------------------------------------------------------------------------


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ticks(vm: VmProcess) -> int:
    """The guest's highest tick so far (a kernel message may split a line, so any match)."""
    return max((int(n) for n in re.findall(r"TICK (\d+)", vm.stdout)), default=0)


def ticks_after_progress(vm: VmProcess, before: int, timeout: float = 30.0) -> int:
    """The tick count once it has passed ``before`` (the fuzz stops and continues the VM at
    random, so the guest may have been paused most of the run; after the final ``cont`` it
    must go on counting), or the count at the timeout."""
    deadline = time.monotonic() + timeout
    while ticks(vm) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    return ticks(vm)


def vmm_rss_kib(pid: int) -> int:
    """The VMM's resident memory without guest RAM (the guest may touch new pages of its own
    while the fuzz runs; that is not the VMM growing)."""
    guest_ram = guest_ram_mapping(pid, GUEST_MEM_BYTES).fields["Rss"]
    return proc_status(pid, "VmRSS") - int(guest_ram.split()[0])


@pytest.fixture(scope="module")
def vm(guest: Path) -> Iterator[VmProcess]:
    """The Linux guest printing its counter, under a VMM with a QMP socket."""
    process = VmProcess(boot_args(guest, COUNTER, mem=GUEST_MEM),
                        env={"STRATOVMM_QMP_RATE": str(VM_QMP_RATE)})
    assert process.wait_stdout("TICK 1", GUEST_TIMEOUT), process.stdout + process.stderr
    yield process
    process.close()


def command_schemas(vm: VmProcess) -> dict[str, dict[str, Any]]:
    """Every command's argument schema, from query-qmp-schema."""
    with vm.client() as client:
        entries = client.command("query-qmp-schema")["return"]
    return {e["name"]: e["arg-type"] for e in entries if e["meta-type"] == "command"}


def fuzz(vm: VmProcess, schema: dict[str, dict[str, Any]], count: int, stats: Stats) -> None:
    """Send at least ``count`` messages, one connection of 25 per hypothesis example."""
    pacer = Pacer()
    batch_size = 25
    validators = {name: jsonschema.Draft202012Validator(s) for name, s in schema.items()}
    connection = st.tuples(
        st.lists(messages(schema, validators), min_size=batch_size, max_size=batch_size),
        st.sampled_from(["read-all", "read-all", "half-close", "abrupt"]))
    target = stats.messages + count
    while stats.messages < target:

        @settings(max_examples=(target - stats.messages) // batch_size + 1, deadline=None,
                  database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=connection)
        def one_connection(case: tuple[list[Msg], str]) -> None:
            batch, mode = case
            run_connection(vm.socket_path, batch, mode, pacer, stats)
            assert vm.proc.poll() is None, vm.stderr

        one_connection()


def settle(vm: VmProcess) -> tuple[int, int]:
    """Undo what valid fuzz requests left (a stop, named fds), let the server finish closing
    the last connections, then the VMM's (RSS KiB, open fds)."""
    with vm.client() as client:
        client.command("cont")
        assert client.command("query-status")["return"]["status"] == "running"
        for name in FD_NAMES:
            client.command("closefd", {"fdname": name})
    time.sleep(0.5)
    return vmm_rss_kib(vm.proc.pid), fd_count(vm.proc.pid)


def test_qmp_fuzz_every_message_answered_vm_survives(vm: VmProcess) -> None:
    """≥10,000 hostile QMP messages: each answered in order with its id (schema-invalid
    ones refused), the VM still running and its guest printing, RSS and fds bounded."""
    schema = command_schemas(vm)
    assert "query-status" in schema and "quit" in schema
    fuzz(vm, schema, WARMUP_MESSAGES, Stats())
    rss_before, fds_before = settle(vm)
    ticks_before = ticks(vm)
    stats = Stats()
    started = time.monotonic()
    fuzz(vm, schema, MESSAGES // 2, stats)
    rss_half = vmm_rss_kib(vm.proc.pid)
    fuzz(vm, schema, MESSAGES - stats.messages, stats)
    elapsed = time.monotonic() - started
    rss_after, fds_after = settle(vm)
    hwm = proc_status(vm.proc.pid, "VmHWM")
    ticks_after = ticks_after_progress(vm, ticks_before)
    print(f"\nQMP fuzz: {stats.messages} messages on {stats.connections} connections in"
          f" {elapsed:.1f} s; {stats.replies} replies, {stats.commands} commands"
          f" ({stats.throttled} throttled), {stats.refused} schema-invalid refused,"
          f" {stats.fds_passed} fds passed; RSS {rss_before} -> {rss_half} -> {rss_after} KiB"
          f" (peak {hwm}), fds {fds_before} -> {fds_after}; guest ticks {ticks_before} ->"
          f" {ticks_after}; kinds {dict(sorted(stats.kinds.items()))}")
    assert stats.messages >= MESSAGES
    assert stats.refused > stats.messages // 10, "too few requests reached the schema check"
    assert vm.proc.poll() is None, vm.stderr
    assert ticks_after > ticks_before, "the guest stopped printing"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    assert fds_after == fds_before, "the VMM kept fds it was passed or opened"
    assert "Traceback" not in vm.stderr, vm.stderr


def test_connection_storm_is_refused_cleanly(vm: VmProcess) -> None:
    """40 connections at once: each gets the greeting or is closed at once (no hang), and
    once they are gone a new client is served."""
    socks = [connect_unix(vm.socket_path, 10) for _ in range(40)]
    greeted = refused = 0
    for sock in socks:
        sock.settimeout(REPLY_TIMEOUT)
        first = sock.recv(4096)
        if first:
            assert b'"QMP"' in first
            greeted += 1
        else:
            refused += 1
    for sock in socks:
        sock.close()
    assert greeted >= 1 and greeted + refused == 40
    time.sleep(0.2)
    with QmpTestClient(vm.socket_path) as client:
        assert client.command("query-status")["return"]["status"] == "running"
    assert vm.proc.poll() is None
