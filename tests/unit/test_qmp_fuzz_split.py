"""Property: the QMP fuzzer's hostile streams frame the same however they are split.

A server reads whatever the socket gives it, so the errors and requests a stream yields
must not depend on where the reads cut it.  The fuzz messages (``tests/qmpfuzz.py``)
go through a ``JsonStreamSplitter`` whole, message by message, and cut at random
points; the frames must be equal.  Runs STRATOVMM_FUZZ_EXAMPLES examples.
"""

from __future__ import annotations

import os
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qmpfuzz import Msg, messages

from stratovmm.cli import core_registry
from stratovmm.plugin import PluginHost
from stratovmm.qmp.framing import BadInput, JsonStreamSplitter

EXAMPLES = int(os.environ.get("STRATOVMM_FUZZ_EXAMPLES", "300"))

SCHEMA = {name: dict(command.schema) for name, command in
          PluginHost.discover().register(core_registry()).qmp.commands.items()}
VALIDATORS = {name: jsonschema.Draft202012Validator(s) for name, s in SCHEMA.items()}


def frames(chunks: list[bytes]) -> list[tuple[str, Any]]:
    """What the splitter yields for ``chunks`` fed in order (comparable, NaN-free)."""
    splitter = JsonStreamSplitter()
    out: list[tuple[str, Any]] = []
    for chunk in chunks:
        for frame in splitter.feed(chunk):
            out.append(("bad", frame.desc) if isinstance(frame, BadInput)
                       else ("value", repr(frame.value)))
    return out


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(messages(SCHEMA, VALIDATORS), min_size=1, max_size=12),
       cuts=st.lists(st.integers(0, 400_000), max_size=8))
def test_fuzz_streams_frame_the_same_however_split(batch: list[Msg], cuts: list[int]) -> None:
    """Whole, per message, or cut anywhere: the same frames (an over-size value that a
    control byte ends is reported as over-size whatever the read boundaries)."""
    data = b"".join(msg.data for msg in batch)
    whole = frames([data])
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert frames(pieces) == whole
    assert frames([msg.data for msg in batch]) == whole


def test_oversize_value_ended_by_a_control_byte_is_reported_in_one_read() -> None:
    """The case the fuzzer found: an unclosed string that grows past the size limit and
    is then ended by a control byte gives the same two errors in one read as in many."""
    data = b'{"id":"' + b"A" * 70_000 + b"\x1c" + b'{"execute":"x"}'
    expected = frames([data[i:i + 4096] for i in range(0, len(data), 4096)])
    assert [kind for kind, _ in expected] == ["bad", "bad", "value"]
    assert "larger than" in expected[0][1]
    assert frames([data]) == expected
