"""What ingest commits: ids, duplicates, event types, metrics, group commits."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from forwarder.ingest.api import build_ingest_app
from tests.ingest.conftest import (
    GOOD_EVENT,
    NDJSON,
    SMALL_LIMITS,
    TOKEN,
    Answer,
    Ingest,
    MakeIngest,
    event_of_size,
)
from tests.support import wait_for

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- accepted bodies -------------------------------------------------------------


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
