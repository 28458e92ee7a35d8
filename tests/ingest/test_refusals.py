"""Ingest refusals: the token, size limits, media types and unknown routes, in JSON."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest
from pydantic import SecretStr

from tests.ingest.conftest import (
    GOOD_EVENT,
    JSON,
    NDJSON,
    SMALL_LIMITS,
    TOKEN,
    Ingest,
    MakeIngest,
    chunks,
    event_of_size,
)


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
