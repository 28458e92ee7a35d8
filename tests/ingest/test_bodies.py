"""Body parsing: each event's bytes are cut out of the body exactly, in every shape.

These call the parsing functions directly, so Hypothesis can afford many
examples: arrays whose strings are full of brackets, commas and escapes, and
whose events hold nested arrays of objects, are what tell the quick cut (one
regular expression for the separators) from the bracket-counting scan.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.errors import IngestError
from forwarder.ingest.bodies import array_elements, parse_json, parse_ndjson
from tests.ingest.json_text import events, styles, write

LIMIT = 1024 * 1024
spaces = st.sampled_from([b"", b" ", b"\n", b"\r\n\t", b"  \n  "])
event_ids = itertools.count()


@st.composite
def written_events(draw: st.DrawFn, one_line: bool = False) -> list[bytes]:
    """One to six events, each written in its own style, some with an ``id``."""
    written: list[bytes] = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        event = draw(events)
        if draw(st.booleans()):
            event = {"id": f"b-{next(event_ids)}", **event}
        written.append(write(event, draw(styles(one_line))).encode())
    return written


@settings(max_examples=100, deadline=None, database=None)
@given(written=written_events(), data=st.data())
def test_array_elements_are_the_bytes_of_each_event(
    written: list[bytes], data: st.DataObject
) -> None:
    """Whatever an array's events and spacing, each element is cut out byte for byte."""
    body = (
        data.draw(spaces)
        + b"["
        + data.draw(spaces)
        + (data.draw(spaces) + b"," + data.draw(spaces)).join(written)
        + data.draw(spaces)
        + b"]"
        + data.draw(spaces)
    )

    records = parse_json(body, LIMIT)

    assert [record.body for record in records] == written
    assert array_elements(body, len(written)) == written


@settings(max_examples=50, deadline=None, database=None)
@given(written=written_events(one_line=True), line_end=st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
def test_ndjson_lines_are_the_bytes_of_each_event(written: list[bytes], line_end: bytes) -> None:
    """Each NDJSON line is stored as its bytes, whatever the event holds."""
    records = parse_ndjson(line_end.join(written), LIMIT)

    assert [record.body for record in records] == written


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'[{"a": 1}]', [b'{"a": 1}'], id="one"),
        pytest.param(b'[ {} ,{"b":[1,2]}\n,\t{ } ]', [b"{}", b'{"b":[1,2]}', b"{ }"], id="spaced"),
        pytest.param(
            b'[{"l": [{"x": 1}, {"y": 2}]}, {"z": 3}]',
            [b'{"l": [{"x": 1}, {"y": 2}]}', b'{"z": 3}'],
            id="nested-objects-in-an-array",
        ),
        pytest.param(
            b'[{"s": "}, {"}, {"t": "\\"}, {\\\\"}]',
            [b'{"s": "}, {"}', b'{"t": "\\"}, {\\\\"}'],
            id="separators-in-strings",
        ),
        pytest.param(
            b'[{"s": "]"}, {"t": "[{"}, {"u": "\\\\"}]',
            [b'{"s": "]"}', b'{"t": "[{"}', b'{"u": "\\\\"}'],
            id="brackets-and-backslashes-in-strings",
        ),
    ],
)
def test_array_elements_of_known_bodies(body: bytes, expected: list[bytes]) -> None:
    """Known tricky arrays are cut where their elements begin and end, and nowhere else."""
    assert array_elements(body, len(expected)) == expected
    assert [record.body for record in parse_json(body, LIMIT)] == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 12345678901234567890123456789, "m": 18446744073709551616}',
        b'{"n": -1' + b"0" * 300 + b"}",
        b'{"n": 1.7976931348623157e308, "tiny": 1e-400, "e": 1E+2, "z": -0}',
    ],
)
@pytest.mark.parametrize("shape", ["single", "array", "ndjson"])
def test_numbers_within_a_doubles_range_are_kept_verbatim(body: bytes, shape: str) -> None:
    """Big integers and unusual number forms are accepted and kept as written, in every shape."""
    if shape == "ndjson":
        records = parse_ndjson(body + b"\n", LIMIT)
    else:
        records = parse_json(b"[" + body + b"]" if shape == "array" else body, LIMIT)

    assert [record.body for record in records] == [body]


@pytest.mark.parametrize(
    "body", [b'{"n": 1' + b"0" * 400 + b"}", b'[{"n": 1e309}]', b'[{"a": 1}, {"n": -2e400}]']
)
def test_numbers_beyond_a_doubles_range_are_malformed(body: bytes) -> None:
    """A number no double can hold is refused: delivery parses stored events with orjson too."""
    with pytest.raises(IngestError) as refused:
        parse_json(body, LIMIT)

    assert (refused.value.status, refused.value.reason) == (400, "malformed")
    assert "malformed JSON" in refused.value.message
