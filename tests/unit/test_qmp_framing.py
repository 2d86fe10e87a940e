"""The QMP byte-stream splitter: boundaries, recovery, bounded buffering."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stratovmm.qmp.framing import BadInput, Frame, JsonStreamSplitter, Message


def feed_all(splitter: JsonStreamSplitter, *chunks: bytes) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out


def values(frames: list[Frame]) -> list[Any]:
    return [f.value if isinstance(f, Message) else f for f in frames]


def test_objects_without_newlines_are_split() -> None:
    """Two objects back to back with no delimiter come out as two messages."""
    assert values(JsonStreamSplitter().feed(b'{"a":1}{"b":[2,{"c":3}]}')) == [
        {"a": 1}, {"b": [2, {"c": 3}]}]


def test_whitespace_and_crlf_between_objects_are_ignored() -> None:
    """Newlines, CR LF, tabs and spaces between values produce nothing."""
    assert values(JsonStreamSplitter().feed(b' \r\n{"a":1}\r\n\t {"b":2}\n\n')) == [
        {"a": 1}, {"b": 2}]


def test_object_split_across_three_feeds() -> None:
    """A message split in three reads, inside a string and after a backslash, is whole."""
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'{"execute":"qu') == []
    assert splitter.feed(b'ery\\') == []
    assert not splitter.idle
    assert values(splitter.feed(b'"x", "id": 7}')) == [{"execute": 'query"x', "id": 7}]
    assert splitter.idle


def test_structural_characters_inside_strings_do_not_count() -> None:
    """Braces, brackets and escaped quotes inside strings do not end a message."""
    data = b'{"a":"}{][","b":"\\"}"}{"c":1}'
    assert values(JsonStreamSplitter().feed(data)) == [{"a": "}{][", "b": '"}'}, {"c": 1}]


def test_malformed_object_is_reported_and_stream_recovers() -> None:
    """A balanced but invalid object gives one BadInput; the next object parses."""
    frames = JsonStreamSplitter().feed(b'{"execute":}{"execute":"stop"}')
    assert isinstance(frames[0], BadInput) and "parse error" in frames[0].desc
    assert values(frames[1:]) == [{"execute": "stop"}]


def test_top_level_scalars_and_arrays_are_returned_as_values() -> None:
    """Non-object JSON is returned as a value (the dispatcher refuses it), then objects."""
    frames = JsonStreamSplitter().feed(b'[1,2] "str" 42 true null {"a":1}')
    assert values(frames) == [[1, 2], "str", 42, True, None, {"a": 1}]


def test_bare_scalar_waits_for_a_delimiter() -> None:
    """A number split across reads is one number, completed by the next delimiter."""
    splitter = JsonStreamSplitter()
    assert splitter.feed(b"12") == []
    assert values(splitter.feed(b"34\n")) == [1234]


def test_stray_closing_brace_is_an_error() -> None:
    """A '}' with no object open is bad input, and what follows still parses."""
    frames = JsonStreamSplitter().feed(b'}{"a":1}')
    assert isinstance(frames[0], BadInput)
    assert values(frames[1:]) == [{"a": 1}]


def test_nan_and_invalid_utf8_are_refused() -> None:
    """NaN is not JSON and bytes that are not UTF-8 are refused, each with BadInput."""
    frames = JsonStreamSplitter().feed(b'{"a":NaN}{"a":"\xc3\x28"}')
    assert len(frames) == 2 and all(isinstance(f, BadInput) for f in frames)


def test_numbers_beyond_float_range_are_refused() -> None:
    """1e999 would decode to infinity, which no reply could echo: it is bad input."""
    frames = JsonStreamSplitter().feed(b'{"execute":"stop","id":1e999} -1e400 ')
    assert len(frames) == 2 and all(isinstance(f, BadInput) for f in frames)


def test_oversize_message_is_refused_without_buffering_and_stream_resyncs() -> None:
    """A message over the limit gives one BadInput at once, is never buffered beyond the
    limit, and the following message parses."""
    splitter = JsonStreamSplitter(max_size=1024)
    big = b'{"execute":"x","arguments":{"pad":"' + b"a" * 100_000 + b'"}}'
    frames: list[Frame] = []
    for i in range(0, len(big), 500):
        frames.extend(splitter.feed(big[i:i + 500]))
        assert splitter.buffered <= 1024
    assert len(frames) == 1 and isinstance(frames[0], BadInput)
    assert "larger than 1024" in frames[0].desc
    assert values(splitter.feed(b'{"execute":"stop"}')) == [{"execute": "stop"}]


def test_oversize_bare_token_is_refused() -> None:
    """A megabyte of digits at top level is refused without holding it."""
    splitter = JsonStreamSplitter(max_size=1024)
    frames = feed_all(splitter, b"1" * 600, b"1" * 600, b"1" * 600)
    assert splitter.buffered <= 1024
    frames += splitter.feed(b' {"a":1}')
    assert isinstance(frames[0], BadInput)
    assert values(frames[1:]) == [{"a": 1}]


def test_deep_nesting_is_refused() -> None:
    """Nesting deeper than the limit is refused (no RecursionError), then recovery."""
    splitter = JsonStreamSplitter(max_depth=64)
    frames = splitter.feed(b"[" * 5000 + b"]" * 5000 + b'{"a":1}')
    assert isinstance(frames[0], BadInput) and "nesting" in frames[0].desc
    assert values(frames[1:]) == [{"a": 1}]


def test_control_byte_resets_an_unclosed_object() -> None:
    """An unclosed object followed by 0xFF (QEMU's reset) is dropped; parsing restarts."""
    splitter = JsonStreamSplitter()
    assert splitter.feed(b'{"execute":"stop", "arguments": {') == []
    frames = splitter.feed(b'\xff{"execute":"cont"}')
    assert isinstance(frames[0], BadInput)
    assert values(frames[1:]) == [{"execute": "cont"}]


def test_run_of_bad_bytes_between_messages_is_one_error() -> None:
    """Garbage control bytes between messages are reported once per run."""
    frames = JsonStreamSplitter().feed(b"\x00\x01\x02\xff {\"a\":1}")
    assert len(frames) == 2 and isinstance(frames[0], BadInput)
    assert values(frames[1:]) == [{"a": 1}]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@given(st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4), max_size=5),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8),
       st.sampled_from([b"", b"\n", b"\r\n", b" "]))
def test_any_split_of_any_objects_gives_the_objects(objects: list[dict[str, Any]],
                                                    cuts: list[int], separator: bytes) -> None:
    """For any objects and any split points, the splitter yields exactly those objects."""
    stream = separator.join(json.dumps(o, ensure_ascii=False).encode() for o in objects)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert values(feed_all(JsonStreamSplitter(), *chunks)) == objects


@given(st.lists(st.binary(max_size=300) | st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b"\\", b"\xff", b'{"execute":"stop"}', b"\n"]), max_size=40))
def test_arbitrary_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    """Any byte sequence, in any chunks, yields frames without raising, within the limit."""
    splitter = JsonStreamSplitter(max_size=256, max_depth=8)
    for chunk in chunks:
        for frame in splitter.feed(chunk):
            assert isinstance(frame, Message | BadInput)
        assert splitter.buffered <= 256


def nested(depth: int, kind: str) -> tuple[bytes, Any]:
    """``depth`` levels of arrays (``[[1]]``) or objects (``{"a":{"a":1}}``) and their value."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return json.dumps(value, separators=(",", ":")).encode(), value


@given(st.lists(st.tuples(st.integers(1, 80), st.sampled_from(["array", "object"])),
                min_size=1, max_size=4),
       st.integers(0, 3), st.lists(st.integers(min_value=0, max_value=700), max_size=6))
def test_runs_of_brackets_end_values_where_json_does(nests: list[tuple[int, str]], extra: int,
                                                     cuts: list[int]) -> None:
    """Back-to-back nested values, some past the depth limit, then ``extra`` stray closers:
    each value ends at its own last closer however the stream is cut, those within the limit
    are returned, deeper ones refused, and each stray closer is an error of its own."""
    limit = 64
    stream, expected = b"", []
    for depth, kind in nests:
        text, value = nested(depth, kind)
        stream += text
        expected.append(value if depth <= limit else "deep")
    stream += b"]" * extra + b'{"end":1}'
    expected += ["stray"] * extra + [{"end": 1}]
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got = [v if not isinstance(v, BadInput) else "deep" if "nesting" in v.desc else "stray"
           for v in values(feed_all(JsonStreamSplitter(max_depth=limit), *chunks))]
    assert got == expected


def test_escapes_end_strings_only_where_json_does_at_every_split() -> None:
    """Escaped quotes and backslashes (``\\"``, ``\\\\``, ``\\u0022``) do not end a string,
    and a backslash at the end of a chunk still escapes the next chunk's first byte."""
    text = {"a": 'x\\"}{' + '"\\' * 3 + "\u0022]", "b": ["\\", '"']}
    stream = json.dumps(text).encode() + b'{"c":"\\u0041\\\\"}'
    for cut in range(len(stream) + 1):
        frames = feed_all(JsonStreamSplitter(), stream[:cut], stream[cut:])
        assert values(frames) == [text, {"c": "A\\"}], cut
