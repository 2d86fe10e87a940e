"""Hostile QMP input for the fuzz tests: hypothesis strategies for single messages and the
framing oracle that says which replies a stream of them is owed.

``messages(schema, validators)`` draws one message of a random kind: random bytes,
non-objects, truncated requests (which swallow what follows until a control byte), deep
nesting around and far beyond ``MAX_NESTING``, values around and beyond
``MAX_MESSAGE_BYTES``, invalid UTF-8, arguments aimed at each command's schema refusals
(wrong type, broken constraint, unknown or missing member, not an object), unknown
commands, broken envelopes, and schema-valid requests with hostile values (never
``quit``; made-up names only, so nothing reaches a host file or tap).  Ids are random
JSON values, some huge.

``expected_replies`` feeds the bytes to a ``JsonStreamSplitter`` and lists the replies the
server owes: one per complete JSON value, with the request's id, and an error for every
request the schema refuses.
"""

from __future__ import annotations

import dataclasses
import json
import string
from typing import Any

import jsonschema
from hypothesis import strategies as st

from stratovmm.qmp.framing import MAX_MESSAGE_BYTES, MAX_NESTING, JsonStreamSplitter, Message

FD_NAMES = ("fuzzfd0", "fuzzfd1", "fuzzfd2", "fuzzfd3")


@dataclasses.dataclass(frozen=True)
class Msg:
    """One fuzz message: its bytes, how many fds ride along, and what it is."""

    data: bytes
    kind: str
    invalid_request: bool = False   # one JSON object the schema must refuse
    fds: int = 0

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 120 else self.data[:100] + b"..." + self.data[-12:]
        return f"Msg({self.kind}, {len(self.data)} bytes, fds={self.fds}, {data!r})"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
VALUE_OF_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([-1, 2**63, 2**64])),
    "number": st.floats(-1e300, 1e300).filter(lambda f: f != int(f)),
    "string": st.text(max_size=40),
    "array": st.lists(json_scalars, max_size=4),
    "object": st.dictionaries(st.text(max_size=8), json_scalars, max_size=3),
}
request_ids = st.one_of(json_values, st.integers(200, 20_000).map(lambda n: "I" * n),
                        st.integers(-(2**200), 2**200))
HUGE_TEMPLATES = (b'{"execute":"query-status","arguments":{"pad":"%s"},"id":"huge"}',
                  b'{"execute":"no-such-command","id":"%s"}', b'{"execute":"%s","id":7}')
HUGE_FILLS = (b"A", "\u00e9".encode(), b"\\\\", b"\\u0041", b'\\"')


def allowed_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a property schema accepts (None when it does not say)."""
    declared = schema.get("type")
    if declared is None:
        return None
    types = {declared} if isinstance(declared, str) else set(declared)
    if "number" in types:
        types.add("integer")
    return types


def constraint_breakers(prop: dict[str, Any]) -> list[Any]:
    """Values of the right type that break the property's constraint keywords."""
    values: list[Any] = []
    if prop.get("minLength", 0) > 0:
        values.append("")
    if "maxLength" in prop:
        values.append("x" * (prop["maxLength"] + 1))
    if "pattern" in prop:
        values.append("has space/and slash")
    if "minimum" in prop:
        values.append(prop["minimum"] - 1)
    if "enum" in prop:
        values.append("no-such-value")
    return values


@st.composite
def wrong_arguments(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """Arguments aimed at ``schema``'s refusals: a wrong type, a broken constraint, an
    unknown member, a missing required one, or not an object at all."""
    properties: dict[str, dict[str, Any]] = schema.get("properties", {})
    required: list[str] = schema.get("required", [])
    base = {name: draw(st.text(max_size=10)) for name in required}
    ways = ["unknown", "not-object"] + (["missing"] if required else [])
    if properties:
        ways += ["wrong-type", "wrong-type", "constraint"]
    way = draw(st.sampled_from(ways))
    if way == "not-object":
        return draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
    if way == "unknown":
        extra = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in properties))
        return {**base, extra: draw(json_values)}
    if way == "missing":
        missing = draw(st.sampled_from(required))
        return {k: v for k, v in base.items() if k != missing}
    name = draw(st.sampled_from(sorted(properties)))
    prop = properties[name]
    breakers = constraint_breakers(prop)
    if way == "constraint" and breakers:
        return {**base, name: draw(st.sampled_from(breakers))}
    types = allowed_types(prop)
    wrong = [t for t in JSON_TYPES if types is None or t not in types]
    return {**base, name: draw(VALUE_OF_TYPE[draw(st.sampled_from(wrong))])}


NO_ARGUMENTS = object()


def request(execute: Any, arguments: Any = NO_ARGUMENTS, request_id: Any = None,
            with_id: bool = True) -> dict[str, Any]:
    """A QMP request; ``arguments`` may be any value, null included."""
    body: dict[str, Any] = {"execute": execute}
    if arguments is not NO_ARGUMENTS:
        body["arguments"] = arguments
    if with_id:
        body["id"] = request_id
    return body


KINDS = ("random-bytes", "random-bytes", "random-bytes", "not-object", "not-object",
         "truncated", "deep", "deep-open", "huge", "bad-utf8", "wrong-args", "wrong-args",
         "wrong-args", "unknown-command", "bad-envelope", "valid")
# QEMU's way to get a confused parser back between values (qmp-spec: "Forcing the JSON
# parser into known-good state"): a byte that never occurs in JSON text.
RESYNC = st.sampled_from([b"\x00", b"\x1b", b"\xff"])


def resync(draw: st.DrawFn) -> bytes:
    """Mostly a resync byte after a value left open, sometimes nothing: then the value
    swallows the messages after it until a later control byte or the end."""
    return draw(RESYNC) if draw(st.integers(0, 3)) else b""


@st.composite
def messages(draw: st.DrawFn, schema: dict[str, dict[str, Any]],
             validators: dict[str, jsonschema.protocols.Validator]) -> Msg:
    """One fuzz message of any kind."""
    kind = draw(st.sampled_from(KINDS))
    fds = draw(st.integers(1, 20)) if draw(st.integers(0, 9)) == 0 else 0
    names = sorted(schema)
    if kind == "random-bytes":
        return Msg(draw(st.binary(min_size=1, max_size=300)), kind, fds=fds)
    if kind == "not-object":
        return Msg(dumps(draw(st.one_of(json_scalars, st.lists(json_values, max_size=5)))) +
                   draw(st.sampled_from([b"", b"\n", b" "])), kind, fds=fds)
    if kind == "truncated":
        whole = dumps(request(draw(st.sampled_from(names)), {}, draw(request_ids)))
        return Msg(whole[:draw(st.integers(1, len(whole) - 1))] + resync(draw), kind, fds=fds)
    if kind in ("deep", "deep-open"):
        depth = draw(st.one_of(st.integers(MAX_NESTING - 3, MAX_NESTING + 3),
                               st.integers(100, 5_000)))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = opener * depth + b"1" + (closer * depth if kind == "deep" else resync(draw))
        if draw(st.booleans()):
            return Msg(inner, kind, fds=fds)
        return Msg(b'{"execute":"query-status","arguments":{"x":' + inner + b"}}", kind,
                   fds=fds)
    if kind == "huge":
        size = draw(st.one_of(st.integers(MAX_MESSAGE_BYTES - 100, MAX_MESSAGE_BYTES + 100),
                              st.integers(1, 200_000)))
        fill = draw(st.sampled_from(HUGE_FILLS))
        return Msg(draw(st.sampled_from(HUGE_TEMPLATES)) % (fill * max(1, size // len(fill))),
                   kind, fds=fds)
    if kind == "bad-utf8":
        return Msg(b'{"execute":"query-status","id":"' + draw(st.sampled_from(
            [b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"])) + b'"}', kind,
            fds=fds)
    if kind == "wrong-args":
        name = draw(st.sampled_from(names))
        arguments = draw(wrong_arguments(schema[name]))
        refused = not isinstance(arguments, dict) or not validators[name].is_valid(arguments)
        return Msg(dumps(request(name, arguments, draw(request_ids), draw(st.booleans()))),
                   kind, invalid_request=refused, fds=fds)
    if kind == "unknown-command":
        name = draw(st.one_of(st.text(max_size=30), st.sampled_from(
            ["__init__", "__class__", "Quit", "quit ", "query-status\u0000", "x-exit-preconfig",
             "human-monitor-command", "system_reset", "migrate"])).filter(
            lambda n: n not in schema))
        arguments = draw(st.one_of(st.just(NO_ARGUMENTS), json_values))
        return Msg(dumps(request(name, arguments, draw(request_ids))), kind,
                   invalid_request=True, fds=fds)
    if kind == "bad-envelope":
        name, rid = draw(st.sampled_from(names)), draw(request_ids)
        body = draw(st.sampled_from([
            {"execute": draw(st.one_of(st.none(), st.integers(), st.lists(st.text()))),
             "id": rid},
            {"arguments": {}, "id": rid},
            {"execute": name, "arguments": draw(st.one_of(json_scalars, st.lists(json_scalars))),
             "id": rid},
            {"execute": name, "id": rid, draw(st.sampled_from(["control", "exec-oob", ""])): 1},
        ]))
        return Msg(dumps(body), kind, invalid_request=True, fds=fds)
    return Msg(dumps(draw(valid_requests(draw(request_ids)))), "valid", fds=fds)


@st.composite
def valid_requests(draw: st.DrawFn, rid: Any) -> dict[str, Any]:
    """Requests that pass the schema, so their handlers run with hostile values; never
    ``quit``, and nothing that could reach a host file or tap (names are made up)."""
    ids = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=20)
    fdname = st.sampled_from(FD_NAMES)
    args = draw(st.sampled_from([
        ("query-status", {}), ("query-name", {}), ("query-version", {}),
        ("query-commands", {}), ("query-qmp-schema", {}), ("query-balloon", {}),
        ("query-stats", {"target": "device", "devices": draw(st.lists(ids, max_size=3))}),
        ("qmp_capabilities", {"enable": draw(st.lists(st.text(max_size=8), max_size=2))}),
        ("stop", {}), ("cont", {}),
        ("getfd", {"fdname": draw(fdname)}), ("closefd", {"fdname": draw(fdname)}),
        ("device_del", {"id": draw(ids)}),
        ("balloon", {"value": draw(st.integers(1, 2**70))}),
        ("device_add", {"driver": draw(st.sampled_from(["virtio-blk-mmio", "virtio-net-mmio"])),
                        "id": draw(ids), "addr": draw(st.one_of(st.integers(-(2**40), 2**70),
                                                                st.text(max_size=12))),
                        "drive": draw(ids), "netdev": draw(ids)}),
        ("blockdev-add", {"node-name": draw(ids), "file": {
            "driver": "file", "filename": "/nonexistent-stratovmm-fuzz/" + draw(ids)}}),
        ("netdev_add", {"id": draw(ids), "fds": draw(fdname)}),
    ]))
    return request(args[0], args[1], rid)


@dataclasses.dataclass
class Expected:
    """One reply the server owes: for a JSON object, its id (if any) and whether it must
    be an error."""

    has_id: bool = False
    request_id: Any = None
    must_fail: bool = False
    msg: Msg | None = None


def expected_replies(batch: list[Msg]) -> tuple[list[Expected], int]:
    """The replies ``batch``, sent on a fresh connection, must get, in order; and how many
    of them answer QMP commands (objects, which count against the 100/s flow control)."""
    splitter = JsonStreamSplitter()
    out: list[Expected] = []
    commands = 0
    for msg in batch:
        was_idle = splitter.idle
        frames = splitter.feed(msg.data)
        for frame in frames:
            if isinstance(frame, Message) and isinstance(frame.value, dict):
                commands += 1
                out.append(Expected("id" in frame.value, frame.value.get("id"),
                                    msg.invalid_request and was_idle and len(frames) == 1,
                                    msg))
            else:
                out.append(Expected(msg=msg))
    return out, commands
