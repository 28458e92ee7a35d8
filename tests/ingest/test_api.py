"""The ingest API's accepted shapes: exact bytes stored, and a malformed request refused whole.

Each test drives ``build_ingest_app`` with the ``aiohttp_client`` fixture
(see conftest.py); the app stores into a real :class:`EventBuffer` on a
SQLite file in ``tmp_path``. After every refused request the SQLite file
itself is read (on a separate connection) to prove that nothing of the
request was stored, and after hostile input a good request is sent to prove
the server still answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.ingest.conftest import (
    JSON,
    NDJSON,
    Ingest,
)

BIG_NUMBERS = (
    b'{"id": "n-1", "big": 12345678901234567890123456789,'
    b' "two_to_the_64": 18446744073709551616, "below": -9223372036854775809,'
    b' "spelt": 1.50, "exp": 1E+2, "tiny": 5e-324, "under": 1e-400}'
)


MALFORMED: list[Any] = [
    pytest.param(JSON, b'{"a": 1', "malformed JSON", id="truncated-object"),
    pytest.param(JSON, b'{"a": 1}{"b": 2}', "malformed JSON", id="two-documents"),
    pytest.param(JSON, b"{'a': 1}", "malformed JSON", id="single-quotes"),
    pytest.param(JSON, b'[{"a": 1}, {"b": ]', "malformed JSON", id="broken-array"),
    pytest.param(NDJSON, b'{"a": 1}\n{"b": 2}\n{"c": \n{"d": 4}', "line 3:", id="ndjson-line-3"),
    pytest.param(
        NDJSON, b'{"a": 1}\r\n\r\n{"c": oops}\r\n', "line 3:", id="ndjson-line-3-after-blank"
    ),
    pytest.param(JSON, b"42", "must be a JSON object", id="number"),
    pytest.param(JSON, b'"text"', "must be a JSON object", id="string"),
    pytest.param(JSON, b"null", "must be a JSON object", id="null"),
    pytest.param(JSON, b"true", "must be a JSON object", id="boolean"),
    pytest.param(JSON, b'[[{"a": 1}]]', "event 0: ", id="nested-array"),
    pytest.param(JSON, b'[{"a": 1}, 2, {"c": 3}]', "event 1: ", id="number-in-array"),
    pytest.param(JSON, b'[{"a": 1}, null]', "event 1: ", id="null-in-array"),
    pytest.param(NDJSON, b'{"a": 1}\n"text"\n', "line 2:", id="ndjson-string"),
    pytest.param(NDJSON, b'{"a": 1}\n[{"b": 2}]\n', "line 2:", id="ndjson-array"),
    pytest.param(JSON, b"", "malformed JSON", id="empty-body"),
    pytest.param(JSON, b" \r\n\t ", "malformed JSON", id="whitespace-body"),
    pytest.param(NDJSON, b"", "no events", id="ndjson-empty-body"),
    pytest.param(JSON, b"[]", "no events", id="empty-array"),
    pytest.param(JSON, b" [ \n ] ", "no events", id="empty-array-spaced"),
    pytest.param(NDJSON, b"\n\r\n   \n\t\r\n", "no events", id="ndjson-only-blank-lines"),
    pytest.param(JSON, b'{"id": 5}', "id must be", id="id-number"),
    pytest.param(JSON, b'{"id": true}', "id must be", id="id-boolean"),
    pytest.param(JSON, b'{"id": ["a"]}', "id must be", id="id-array"),
    pytest.param(JSON, b'{"id": {"v": "a"}}', "id must be", id="id-object"),
    pytest.param(JSON, b'{"id": ""}', "id must be", id="id-empty"),
    pytest.param(JSON, b'{"id": "' + b"x" * 257 + b'"}', "id must be", id="id-257-chars"),
    pytest.param(JSON, b'[{"id": "ok"}, {"id": 7}]', "event 1: id must be", id="id-in-array"),
    pytest.param(NDJSON, b'{"id": "ok"}\n{"id": ""}', "line 2: id must be", id="id-in-ndjson"),
    pytest.param(JSON, b'{"a": "\xff"}', "UTF-8", id="invalid-utf8-in-string"),
    pytest.param(JSON, b'\xfe{"a": 1}', "UTF-8", id="invalid-utf8-lead-byte"),
    pytest.param(JSON, b'{"a": "\xc3\x28"}', "UTF-8", id="invalid-utf8-sequence"),
    pytest.param(JSON, b'{"a": "\xed\xa0\x80"}', "UTF-8", id="utf8-encoded-surrogate"),
    pytest.param(NDJSON, b'{"a": 1}\n{"b": "\xff"}', "line 2:", id="invalid-utf8-ndjson"),
    pytest.param(JSON, b'{"a": NaN}', "malformed JSON", id="nan"),
    pytest.param(JSON, b'{"a": Infinity}', "malformed JSON", id="infinity"),
    pytest.param(JSON, b'{"a": -Infinity}', "malformed JSON", id="minus-infinity"),
    pytest.param(JSON, b'[{"a": 1}, {"b": NaN}]', "malformed JSON", id="nan-in-array"),
    pytest.param(NDJSON, b'{"a": 1}\n{"b": Infinity}', "line 2:", id="infinity-ndjson"),
    pytest.param(JSON, b'{"a": 1e999}', "malformed JSON", id="number-overflowing-to-inf"),
    pytest.param(JSON, b"[" * 100_000, "malformed JSON", id="deep-open-arrays"),
    pytest.param(JSON, b'{"a": ' * 100_000, "malformed JSON", id="deep-open-objects"),
    pytest.param(JSON, b"[" * 100_000 + b"]" * 100_000, "malformed JSON", id="deep-closed-arrays"),
    pytest.param(NDJSON, b'{"a": 1}\n' + b"[" * 100_000, "line 2:", id="deep-ndjson"),
    pytest.param(JSON, b'{"a": 1' + b"0" * 400 + b"}", "malformed JSON", id="integer-past-double"),
    pytest.param(
        JSON, b'[{"a": 1}, {"b": -1' + b"0" * 400 + b"}]", "malformed JSON", id="integer-in-array"
    ),
]


@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8"])
async def test_single_object_is_committed_as_the_exact_bytes_sent(
    ingest: Ingest, content_type: str
) -> None:
    """A single JSON object is answered 202 after commit and stored as sent, only trimmed."""
    sent = b'{ "id" : "evt-1",  "event_type":"user.login", "n": 1.50, "u": "caf\\u00e9" }'
    answer = await ingest.post(b" \r\n\t" + sent + b"\n\n ", content_type)

    assert (answer.status, answer.payload) == (202, {"accepted": 1, "duplicates": 0})
    # Read on a separate connection right after the answer: the commit came first.
    assert ingest.rows() == [(1, "evt-1", "user.login", sent)]
    assert ingest.buffer.head_seq == 1


@pytest.mark.parametrize(
    "elements",
    [
        pytest.param(
            [
                b'{\n  "id": "a-1",\n  "type": "t",\n'
                b'  "u": "caf\\u00e9 \xc3\xa9 \\ud83d\\ude00"\n}',
                BIG_NUMBERS,
                b'{ "z" : 1 , "a" : 2, "z": 3 }',
                b"{}",
            ],
            id="separated-by-commas-only",
        ),
        pytest.param(
            [
                b'{"list": [{"a": 1}, {"b": [{}, {"c": "]"}]}], "s": "},{ ] [ \\" \\\\"}',
                b'{"s": "} , {", "t": "\\\\", "u": "\\"}, {\\""}',
                b'{"deep": [[[{"x": [1, {"y": {}}]}]]]}',
            ],
            id="nested-objects-and-brackets-in-strings",
        ),
    ],
)
async def test_array_elements_are_stored_as_the_exact_bytes_sent(
    ingest: Ingest, elements: list[bytes]
) -> None:
    """Each element of a JSON array is stored as the bytes sent for it, not re-serialised."""
    body = b" \r\n[\n  " + b" ,\n\t".join(elements) + b"\n] \n"
    answer = await ingest.post(body)

    assert (answer.status, answer.payload) == (202, {"accepted": len(elements), "duplicates": 0})
    assert ingest.bodies() == elements


@pytest.mark.parametrize(
    ("content_type", "shape"),
    [
        pytest.param(JSON, lambda event: event, id="single-object"),
        pytest.param(JSON, lambda event: b"[" + event + b"]", id="array"),
        pytest.param(JSON, lambda event: b'[{"n": 0}, ' + event + b"]", id="array-second"),
        pytest.param(NDJSON, lambda event: b'{"n": 0}\n' + event + b"\n", id="ndjson"),
    ],
)
async def test_big_and_unusual_numbers_are_kept_as_sent_in_every_shape(
    ingest: Ingest, content_type: str, shape: Callable[[bytes], bytes]
) -> None:
    """Integers beyond 64 bits and numbers a parser would rewrite are accepted and kept verbatim."""
    answer = await ingest.post(shape(BIG_NUMBERS), content_type)

    assert answer.status == 202
    assert ingest.bodies()[-1] == BIG_NUMBERS
    assert ingest.rows()[-1][1] == "n-1"


@pytest.mark.parametrize(
    ("content_type", "shape"),
    [
        pytest.param(JSON, lambda event: event, id="single-object"),
        pytest.param(JSON, lambda event: b"[" + event + b"]", id="array"),
        pytest.param(NDJSON, lambda event: event, id="ndjson"),
    ],
)
async def test_deeply_nested_event_is_accepted_alike_in_every_shape(
    ingest: Ingest, content_type: str, shape: Callable[[bytes], bytes]
) -> None:
    """An object nested 300 deep is stored as sent whatever the shape (arrays once refused it)."""
    event = b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}"
    answer = await ingest.post(shape(event), content_type)

    assert (answer.status, answer.payload) == (202, {"accepted": 1, "duplicates": 0})
    assert ingest.bodies() == [event]


@pytest.mark.parametrize(
    "content_type",
    [NDJSON, "application/ndjson", "application/x-ndjson; charset=utf-8"],
)
async def test_ndjson_lines_are_stored_as_their_bytes(ingest: Ingest, content_type: str) -> None:
    """NDJSON stores each line's bytes; blank lines and CRLF line ends are tolerated."""
    lines = [b'{"id": "l-1",  "n": 1}', b'{"n" : 2, "s": "a b"}', b'{ "n": 3 }']
    body = b"\n" + lines[0] + b"\r\n\r\n   \n" + lines[1] + b"\r\n\t" + lines[2] + b"  \r\n\n"
    answer = await ingest.post(body, content_type)

    assert (answer.status, answer.payload) == (202, {"accepted": 3, "duplicates": 0})
    assert ingest.bodies() == lines


# -- 400 malformed -----------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body", "message"), MALFORMED)
async def test_malformed_request_is_refused_whole_and_server_keeps_serving(
    ingest: Ingest, content_type: str, body: bytes, message: str
) -> None:
    """Malformed input is answered 400 malformed, stores nothing, and later requests succeed."""
    answer = await ingest.post(body, content_type)

    assert answer.status == 400
    assert answer.payload["error"] == "malformed"
    assert message in answer.payload["message"]
    assert answer.headers["Content-Type"].startswith("application/json")
    assert ingest.rows() == []
    assert ingest.rejected("malformed") == 1
    assert ingest.received() == 0
    await ingest.assert_still_accepting()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(JSON, b'[{"id": "g1"}, {"id": "g2"}, {"n": 3}, {"id": ""}]', id="array"),
        pytest.param(NDJSON, b'{"id": "g1"}\n{"id": "g2"}\n{"n": 3}\n{"n": 4', id="ndjson"),
    ],
)
async def test_one_bad_event_refuses_every_event_of_the_request(
    ingest: Ingest, content_type: str, body: bytes
) -> None:
    """All-or-nothing: good events before a bad one are not stored, and their ids stay free."""
    answer = await ingest.post(body, content_type)
    assert answer.status == 400
    assert ingest.rows() == []

    # The refused request left no trace in the dedup table either.
    answer = await ingest.post(b'[{"id": "g1"}, {"id": "g2"}]')
    assert (answer.status, answer.payload) == (202, {"accepted": 2, "duplicates": 0})


@pytest.mark.parametrize("length", [1, 36, 256])
async def test_ids_of_one_to_256_characters_are_accepted(ingest: Ingest, length: int) -> None:
    """Client ids from 1 to 256 characters (any characters) are stored as given."""
    event_id = ("é" + "k" * 255)[:length]
    answer = await ingest.post(orjson.dumps({"id": event_id}))

    assert answer.status == 202
    assert [row[1] for row in ingest.rows()] == [event_id]


# -- 401 unauthorized --------------------------------------------------------------
