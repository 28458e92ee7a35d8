"""The ingest API on good and hostile input, through the real aiohttp app and a real buffer.

Each test drives ``build_ingest_app`` with the ``aiohttp_client`` fixture
(see conftest.py); the app stores into a real :class:`EventBuffer` on a
SQLite file in ``tmp_path`` and counts on a fresh ``CollectorRegistry``.
After every refused request the SQLite file itself is read (on a separate
connection) to prove that nothing of the request was stored, and after
hostile input a good request is sent to prove the server still answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import sqlite3
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from forwarder.ingest.api import build_ingest_app
from tests.ingest.conftest import (
    GOOD_EVENT,
    JSON,
    NDJSON,
    SMALL_LIMITS,
    TOKEN,
    Answer,
    Ingest,
    MakeIngest,
    chunks,
    event_of_size,
)
from tests.support import wait_for

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- accepted bodies -------------------------------------------------------------


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


BIG_NUMBERS = (
    b'{"id": "n-1", "big": 12345678901234567890123456789,'
    b' "two_to_the_64": 18446744073709551616, "below": -9223372036854775809,'
    b' "spelt": 1.50, "exp": 1E+2, "tiny": 5e-324, "under": 1e-400}'
)


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


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": ""}, id="empty"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-with-suffix"),
        pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="token-prefix"),
        pytest.param({"Authorization": "Bearer"}, id="scheme-only"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="basic-with-the-token"),
        pytest.param(
            {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()},
            id="basic-credentials",
        ),
        pytest.param({"Authorization": "Bearer t\u00e9ken"}, id="non-ascii-token"),
    ],
)
async def test_wrong_or_missing_token_is_unauthorized(
    make_ingest: MakeIngest, headers: dict[str, str]
) -> None:
    """With a token configured, anything but ``Bearer <token>`` is 401 and stores nothing."""
    ingest = await make_ingest(token=SecretStr(TOKEN))
    answer = await ingest.post(GOOD_EVENT, headers=headers)

    assert answer.status == 401
    assert answer.payload["error"] == "unauthorized"
    assert answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("unauthorized") == 1


async def test_non_utf8_authorization_header_is_unauthorized(make_ingest: MakeIngest) -> None:
    """Raw non-UTF-8 bytes in the Authorization header are a wrong token (401), not a crash."""
    ingest = await make_ingest(token=SecretStr(TOKEN))
    request = (
        b"POST /v1/events HTTP/1.1\r\n"
        b"Host: localhost\r\n"
        b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(GOOD_EVENT)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + GOOD_EVENT
    )
    reader, writer = await asyncio.open_connection(ingest.client.host, ingest.client.port)
    try:
        writer.write(request)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].startswith(b"HTTP/1.1 401"), head
    assert orjson.loads(body)["error"] == "unauthorized"
    assert ingest.rows() == []
    assert ingest.rejected("unauthorized") == 1


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_right_bearer_token_is_accepted(make_ingest: MakeIngest, scheme: str) -> None:
    """``Authorization: Bearer <token>`` (scheme in any case) is accepted with 202."""
    ingest = await make_ingest(token=SecretStr(TOKEN))
    answer = await ingest.post(GOOD_EVENT, headers={"Authorization": f"{scheme} {TOKEN}"})

    assert (answer.status, answer.payload) == (202, {"accepted": 1, "duplicates": 0})
    assert ingest.bodies() == [GOOD_EVENT]
    assert ingest.rejected("unauthorized") == 0


# -- 413 too large -----------------------------------------------------------------


def ndjson_of_size(size: int, line_size: int = 1000) -> bytes:
    """An NDJSON body of exactly ``size`` bytes made of events under ``line_size`` bytes."""
    lines: list[bytes] = []
    remaining = size
    while remaining > 0:
        take = min(line_size, remaining)
        if 0 < remaining - take < 20:  # keep the last line big enough to be an event
            take = remaining - 20
        lines.append(event_of_size(take - 1) + b"\n")
        remaining -= take
    body = b"".join(lines)
    assert len(body) == size
    return body


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_request_over_max_request_bytes_is_too_large(
    make_ingest: MakeIngest, streamed: bool
) -> None:
    """A body over maxRequestBytes is 413, with or without Content-Length, and stores nothing."""
    ingest = await make_ingest(**SMALL_LIMITS)
    body = ndjson_of_size(4097)
    answer = await ingest.post(chunks(body, 512) if streamed else body, NDJSON)

    assert answer.status == 413
    assert answer.payload["error"] == "too_large"
    assert "4096" in answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("too_large") == 1
    await ingest.assert_still_accepting()


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_request_of_exactly_max_request_bytes_is_accepted(
    make_ingest: MakeIngest, streamed: bool
) -> None:
    """A body of exactly maxRequestBytes is within the limit, sent either way."""
    ingest = await make_ingest(**SMALL_LIMITS)
    body = ndjson_of_size(4096)
    answer = await ingest.post(chunks(body, 512) if streamed else body, NDJSON)

    assert answer.status == 202
    assert ingest.bodies() == body.split()


@pytest.mark.parametrize(
    ("content_type", "body", "where"),
    [
        pytest.param(JSON, event_of_size(1025), "", id="single-object"),
        pytest.param(
            JSON,
            b"[" + event_of_size(100) + b"," + event_of_size(1025) + b"]",
            "event 1: ",
            id="array-element",
        ),
        pytest.param(
            NDJSON,
            event_of_size(100) + b"\n" + event_of_size(100) + b"\n" + event_of_size(1025),
            "line 3: ",
            id="ndjson-line",
        ),
    ],
)
async def test_event_over_max_event_bytes_is_too_large(
    make_ingest: MakeIngest, content_type: str, body: bytes, where: str
) -> None:
    """One event over maxEventBytes refuses the request with 413 and stores nothing."""
    ingest = await make_ingest(**SMALL_LIMITS)
    answer = await ingest.post(body, content_type)

    assert answer.status == 413
    assert answer.payload["error"] == "too_large"
    assert answer.payload["message"].startswith(where)
    assert "1024" in answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("too_large") == 1


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param(JSON, b"  " + event_of_size(1024) + b"\n", id="single-object"),
        pytest.param(JSON, b"[ " + event_of_size(1024) + b" ]", id="array-element"),
        pytest.param(NDJSON, b"\r\n" + event_of_size(1024) + b"  \r\n", id="ndjson-line"),
    ],
)
async def test_event_of_exactly_max_event_bytes_is_accepted(
    make_ingest: MakeIngest, content_type: str, body: bytes
) -> None:
    """An event of exactly maxEventBytes (surrounding whitespace not counted) is accepted."""
    ingest = await make_ingest(**SMALL_LIMITS)
    answer = await ingest.post(body, content_type)

    assert answer.status == 202
    assert [len(stored) for stored in ingest.bodies()] == [1024]


# -- 415, 404, 405 -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        None,
        "application/xml",
        "multipart/form-data; boundary=xyz",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ],
)
async def test_other_media_types_are_unsupported(ingest: Ingest, content_type: str | None) -> None:
    """A body that is not JSON or NDJSON by Content-Type is 415 and stores nothing."""
    answer = await ingest.post(GOOD_EVENT, content_type)

    assert answer.status == 415
    assert answer.payload["error"] == "unsupported_media_type"
    assert "application/json" in answer.payload["message"]
    assert ingest.rows() == []
    assert ingest.rejected("unsupported_media_type") == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/v1/events", 405, "method_not_allowed"),
        ("PUT", "/v1/events", 405, "method_not_allowed"),
        ("DELETE", "/v1/events", 405, "method_not_allowed"),
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/nope", 404, "not_found"),
        ("POST", "/v1/events/extra", 404, "not_found"),
    ],
)
async def test_unknown_routes_and_methods_answer_json(
    ingest: Ingest, method: str, path: str, status: int, reason: str
) -> None:
    """404 and 405 are JSON errors like ours; 405 names the allowed method in ``Allow``."""
    async with ingest.client.request(method, path, data=GOOD_EVENT) as response:
        payload = await response.json()
        assert response.status == status
        assert response.content_type == "application/json"
        assert payload["error"] == reason
        assert payload["message"]
        if status == 405:
            assert response.headers["Allow"] == "POST"
    assert ingest.rows() == []


# -- 503 -----------------------------------------------------------------------------


def assert_unavailable(answer: Answer, reason: str) -> None:
    """A 503 with the reason and a positive integer ``Retry-After``."""
    assert answer.status == 503
    assert answer.payload["error"] == reason
    assert answer.payload["message"]
    assert int(answer.headers["Retry-After"]) > 0


async def test_shutting_down_answers_503_with_retry_after(ingest: Ingest) -> None:
    """While the daemon is shutting down, ingest answers 503 + Retry-After and stores nothing."""
    ingest.context.accepting = False
    answer = await ingest.post(b'[{"id": "s1"}, {"id": "s2"}]')

    assert_unavailable(answer, "shutting_down")
    assert ingest.rows() == []
    assert ingest.rejected("shutting_down") == 1
    assert ingest.received() == 0


async def test_closed_buffer_answers_503_with_retry_after(ingest: Ingest) -> None:
    """Once the buffer is closed, ingest answers 503 + Retry-After and stores nothing."""
    await ingest.buffer.close()
    answer = await ingest.post(b'{"id": "c1"}')

    assert_unavailable(answer, "shutting_down")
    assert ingest.rows() == []
    assert ingest.rejected("shutting_down") == 1


async def test_full_disk_answers_503_buffer_full_then_recovers(ingest: Ingest) -> None:
    """A real SQLITE_FULL refuses the whole batch with 503 buffer_full; ingest recovers after."""
    writer = ingest.buffer._writer
    assert writer is not None
    (page_count,) = next(iter(await writer.execute_fetchall("PRAGMA page_count")))
    await writer.execute(f"PRAGMA max_page_count = {page_count}")
    batch = b"\n".join(event_of_size(900, id=f"full-{n}") for n in range(300))

    answer = await ingest.post(batch, NDJSON)

    assert_unavailable(answer, "buffer_full")
    assert ingest.rows() == []
    assert ingest.rejected("buffer_full") == 1
    assert ingest.received() == 0

    await writer.execute("PRAGMA max_page_count = 1000000000")
    answer = await ingest.post(batch, NDJSON)
    assert (answer.status, answer.payload) == (202, {"accepted": 300, "duplicates": 0})
    rows = ingest.rows()
    assert [row[1] for row in rows] == [f"full-{n}" for n in range(300)]
    assert [row[0] for row in rows] == list(range(1, 301))


# -- ids, duplicates, event types ------------------------------------------------------


async def test_same_id_twice_in_one_request_is_stored_once(ingest: Ingest) -> None:
    """A repeated id within one request counts as a duplicate and is stored once (the first)."""
    answer = await ingest.post(b'[{"id": "d1", "n": 1}, {"id": "d1", "n": 2}]')

    assert (answer.status, answer.payload) == (202, {"accepted": 2, "duplicates": 1})
    assert [(row[1], orjson.loads(row[3])) for row in ingest.rows()] == [
        ("d1", {"id": "d1", "n": 1})
    ]


async def test_same_id_in_a_later_request_is_a_duplicate(ingest: Ingest) -> None:
    """An id already stored by an earlier request is reported as a duplicate and not stored."""
    first = await ingest.post(b'{"id": "d1", "n": 1}')
    again = await ingest.post(b'{"id": "d1", "n": 1}')
    mixed = await ingest.post(b'{"id": "d2"}\n{"id": "d1", "n": 3}', NDJSON)

    assert (first.status, first.payload) == (202, {"accepted": 1, "duplicates": 0})
    assert (again.status, again.payload) == (202, {"accepted": 1, "duplicates": 1})
    assert (mixed.status, mixed.payload) == (202, {"accepted": 2, "duplicates": 1})
    assert [row[1] for row in ingest.rows()] == ["d1", "d2"]
    assert ingest.bodies()[0] == b'{"id": "d1", "n": 1}'


async def test_events_without_id_get_sortable_uuid_shaped_ids(ingest: Ingest) -> None:
    """Events without an id get distinct UUID-shaped (version 8) ids that sort in ingest order."""
    await ingest.post(b'[{"n": 0}, {"n": 1}, {"n": 2}]')
    await ingest.post(b'{"n": 3}\n{"n": 4}\n{"n": 5}', NDJSON)
    await ingest.post(b'{"n": 6}')

    rows = ingest.rows()
    ids = [row[1] for row in rows]
    assert [orjson.loads(row[3])["n"] for row in rows] == list(range(7))
    assert all(len(event_id) == 36 and UUID_SHAPE.match(event_id) for event_id in ids), ids
    assert all(event_id[14] == "8" for event_id in ids)
    assert all(event_id[19] in "89ab" for event_id in ids)
    assert len({event_id[:18] for event_id in ids}) == 1  # this buffer's instance number
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param({"event_type": "approval.created"}, "approval.created", id="event_type"),
        pytest.param({"type": "key.revoked"}, "key.revoked", id="type"),
        pytest.param({"event_type": "a.b", "type": "c.d"}, "a.b", id="event_type-wins"),
        pytest.param({"n": 1}, None, id="neither"),
        pytest.param({"event_type": 5}, None, id="event_type-number"),
        pytest.param({"event_type": 5, "type": "c.d"}, "c.d", id="type-if-event_type-not-text"),
        pytest.param({"type": {"name": "x"}}, None, id="type-object"),
        pytest.param({"type": ["x"]}, None, id="type-array"),
        pytest.param({"data": {"event_type": "inner"}}, None, id="nested-not-used"),
    ],
)
async def test_event_type_column_comes_from_event_type_else_type(
    ingest: Ingest, event: dict[str, Any], expected: str | None
) -> None:
    """event_type is stored from ``event_type``, else ``type``, else NULL; non-strings are NULL."""
    single = await ingest.post(orjson.dumps(event))
    in_array = await ingest.post(orjson.dumps([event]))
    ndjson = await ingest.post(orjson.dumps(event), NDJSON)

    assert [single.status, in_array.status, ndjson.status] == [202, 202, 202]
    assert [row[2] for row in ingest.rows()] == [expected] * 3


# -- metrics -----------------------------------------------------------------------------


async def test_metrics_count_accepted_events_and_each_refusal_by_reason(
    make_ingest: MakeIngest,
) -> None:
    """received counts stored events per transport; rejected counts refusals by reason."""
    ingest = await make_ingest(token=SecretStr(TOKEN), **SMALL_LIMITS)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    accepted = [
        await ingest.post(b'{"id": "m1"}', headers=auth),
        await ingest.post(b'[{"id": "m2"}, {"id": "m2"}, {"n": 1}]', headers=auth),
        await ingest.post(b'{"a": 1}\n{"b": 2}', NDJSON, headers=auth),
    ]
    refused = [
        await ingest.post(b'{"a": ', headers=auth),
        await ingest.post(b"[]", headers=auth),
        await ingest.post(GOOD_EVENT),
        await ingest.post(event_of_size(2000), headers=auth),
        await ingest.post(GOOD_EVENT, "text/plain", headers=auth),
    ]
    ingest.context.accepting = False
    refused.append(await ingest.post(GOOD_EVENT, headers=auth))

    assert [answer.status for answer in accepted] == [202, 202, 202]
    assert [answer.status for answer in refused] == [400, 400, 401, 413, 415, 503]
    # The repeated "m2" is answered as accepted but counted as a duplicate, not received.
    assert sum(answer.payload["accepted"] for answer in accepted) == 6
    assert ingest.received() == len(ingest.rows()) == 5
    assert {
        reason: ingest.rejected(reason)
        for reason in (
            "malformed",
            "unauthorized",
            "too_large",
            "unsupported_media_type",
            "shutting_down",
            "buffer_full",
        )
    } == {
        "malformed": 2,
        "unauthorized": 1,
        "too_large": 1,
        "unsupported_media_type": 1,
        "shutting_down": 1,
        "buffer_full": 0,
    }
    assert len(ingest.rows()) == 5


# -- concurrency -------------------------------------------------------------------------


async def test_concurrent_requests_share_group_commits_with_contiguous_seqs(
    ingest: Ingest,
) -> None:
    """50 concurrent single-event requests are all 202 and get distinct contiguous seqs."""
    answers = await asyncio.gather(
        *(ingest.post(orjson.dumps({"id": f"c-{n}", "n": n})) for n in range(50))
    )

    assert [(answer.status, answer.payload) for answer in answers] == [
        (202, {"accepted": 1, "duplicates": 0})
    ] * 50
    rows = ingest.rows()
    assert [row[0] for row in rows] == list(range(1, 51))
    assert {row[1] for row in rows} == {f"c-{n}" for n in range(50)}
    assert ingest.received() == 50
    # received_at is stamped once per transaction: fewer distinct values than
    # requests shows that requests shared group commits.
    with contextlib.closing(sqlite3.connect(ingest.buffer.path)) as conn:
        (transactions,) = conn.execute("SELECT count(*) FROM batches").fetchone()
    assert transactions < 50


async def test_a_client_hanging_up_mid_body_is_logged_once_without_a_traceback(
    ingest: Ingest,
) -> None:
    """A body cut short by the client stores nothing and logs one info line, no error or bytes."""
    # The daemon's runner does not cancel handlers on disconnect (the test
    # client's does), so serve the same app the daemon's way.
    runner = web.AppRunner(build_ingest_app(ingest.context, "http"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    marker = b'{"personal": "MARKER-IN-BODY"'
    try:
        with capture_logs() as logs:
            _reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + marker
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            await wait_for(
                lambda: any(e["event"] == "ingest_client_disconnected" for e in logs),
                message="the disconnect to be logged",
            )
    finally:
        await runner.cleanup()
    assert ingest.rows() == []
    assert [e for e in logs if e["log_level"] in ("error", "warning", "critical")] == []
    assert "MARKER" not in repr(logs)
    await ingest.assert_still_accepting()
