"""Outcomes write history rows and dead letters with every echoed secret masked first.

A real SQLite buffer in ``tmp_path`` receives the rows; they are read back
with the same queries the admin API uses, so what is asserted is what an
operator would be shown.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yarl
from prometheus_client import CollectorRegistry

from forwarder.buffer.batches import StoredEvent
from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.outcomes import ForwarderStatus, Outcomes
from forwarder.destinations.webhook.sending import RESPONSE_BODY_LIMIT, Response
from forwarder.errors import PermanentDeliveryError, RetryableDeliveryError
from forwarder.ingest.ids import IdGenerator
from forwarder.metrics import Metrics
from forwarder.secrets import SecretMasker
from tests.support import read_all

TOKEN = "BAD/HTTP+SECRET=31x"
# The URL as aiohttp quotes it in ClientResponseError: yarl's half-encoded query.
YARL_URL = str(yarl.URL("http://127.0.0.1:1/in?token=BAD%2FHTTP%2BSECRET%3D31x"))
ECHO = b'{"error": "bad token BAD%2fHTTP%2bSECRET%3d31x", "url": "/in?token=BAD\\/HTTP+SECRET=31x"}'
EVENT = b'{"event_type": "user.login", "note": "BAD/HTTP+SECRET=31x"}'


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real buffer with one forwarder, ``f``, holding one event; closed at teardown."""
    buffer = EventBuffer(tmp_path / "buffer.db")
    await buffer.open(["f"])
    await buffer.append([EventRecord(IdGenerator().new(), "user.login", EVENT, False)])
    yield buffer
    await buffer.close()


def outcomes(buffer: EventBuffer, secrets: list[str]) -> Outcomes:
    """The outcomes of forwarder ``f`` (an attempt under way) with a masker knowing ``secrets``."""
    return Outcomes(
        "f",
        ForwarderStatus("f", last_attempt_at=time.time()),
        buffer,
        Metrics(CollectorRegistry()),
        time.time,
        secret_masker=SecretMasker(secrets),
    )


async def history(buffer: EventBuffer) -> list[tuple[Any, ...]]:
    """(error, response_body) of every attempt, once the queued rows are committed."""
    await buffer.execute([])  # committed with, or after, every row submitted before it
    return await buffer.query("SELECT error, response_body FROM delivery_attempts ORDER BY id")


async def test_history_rows_are_masked_before_they_are_written(buffer: EventBuffer) -> None:
    """The error message (aiohttp's URL) and the echoing body are stored with *** only."""
    batch = await read_all(buffer, "f")
    failure = RetryableDeliveryError(
        "connection_error", f"ClientResponseError: 400, url='{YARL_URL}'", status=None, body=ECHO
    )

    outcomes(buffer, [TOKEN]).attempt(batch, 1, "retry", failure, time.monotonic())

    assert await history(buffer) == [
        (
            "ClientResponseError: 400, url='http://127.0.0.1:1/in?token=***'",
            b'{"error": "bad token ***", "url": "/in?token=***"}',
        )
    ]


async def test_a_successful_answer_echoing_the_token_is_masked(buffer: EventBuffer) -> None:
    """A 2xx body quoting the credentials (httpbin-style receivers) is stored masked."""
    batch = await read_all(buffer, "f")
    response = Response(200, {}, b'{"args": {"token": "BAD/HTTP+SECRET=31x"}}', 0.01)

    outcomes(buffer, [TOKEN]).attempt(batch, 1, "success", response, time.monotonic())

    assert await history(buffer) == [(None, b'{"args": {"token": "***"}}')]


async def test_a_body_cut_at_the_limit_shows_no_start_of_the_token(buffer: EventBuffer) -> None:
    """A body read up to the limit that ends inside the token keeps none of its characters."""
    batch = await read_all(buffer, "f")
    body = b" " * (RESPONSE_BODY_LIMIT - 8) + b"BAD%2FHT"
    failure = PermanentDeliveryError("401", "HTTP 401", status=401, body=body)

    outcomes(buffer, [TOKEN]).attempt(batch, 1, "dead_letter", failure, time.monotonic())

    ((_, stored),) = await history(buffer)
    assert stored == b" " * (RESPONSE_BODY_LIMIT - 8) + b"***"


async def test_dead_letters_are_masked_but_keep_the_event_as_received(
    buffer: EventBuffer,
) -> None:
    """Reason and response body are masked; the event itself is stored untouched for replay."""
    batch: list[StoredEvent] = await read_all(buffer, "f")
    failure = PermanentDeliveryError("401", "HTTP 401", status=401, body=ECHO)

    async def never_pause(_: int) -> bool:
        raise AssertionError("the write did not fail")

    recorded = await outcomes(buffer, [TOKEN]).dead_letter(
        batch, failure, f"gave up: {YARL_URL}", never_pause
    )

    assert recorded
    rows = await buffer.query("SELECT reason, response_body, body FROM dead_letters")
    assert rows == [
        (
            "gave up: http://127.0.0.1:1/in?token=***",
            b'{"error": "bad token ***", "url": "/in?token=***"}',
            EVENT,
        )
    ]


async def test_without_secrets_rows_are_stored_as_answered(buffer: EventBuffer) -> None:
    """With no secret configured, nothing is masked (only cut to the limit)."""
    batch = await read_all(buffer, "f")
    body = ECHO + b"x" * RESPONSE_BODY_LIMIT
    failure = PermanentDeliveryError("401", "HTTP 401", status=401, body=body)

    outcomes(buffer, []).attempt(batch, 1, "dead_letter", failure, time.monotonic())

    assert await history(buffer) == [("HTTP 401", body[:RESPONSE_BODY_LIMIT])]


async def test_each_outcome_and_code_is_counted_in_its_own_series(buffer: EventBuffer) -> None:
    """Attempts are counted per (outcome, code), deliveries and durations per forwarder."""
    registry = CollectorRegistry()
    recorder = Outcomes(
        "f", ForwarderStatus("f", last_attempt_at=time.time()), buffer, Metrics(registry), time.time
    )
    batch = await read_all(buffer, "f")
    recorder.failure(RetryableDeliveryError("503", "HTTP 503", status=503), 1, "retry")
    recorder.failure(RetryableDeliveryError("503", "HTTP 503", status=503), 2, "retry")
    recorder.failure(RetryableDeliveryError("timeout", "no answer"), 3, "retry")
    recorder.failure(RetryableDeliveryError("503", "HTTP 503", status=503), 4, "dead_letter")
    answer = Response(200, {}, b"", 0.01)
    for _ in range(2):
        recorder.success(batch, answer)
        recorder.attempt(batch, 4, "success", answer, time.monotonic())

    def attempts(outcome: str, code: str) -> float | None:
        labels = {"forwarder": "f", "outcome": outcome, "code": code}
        return registry.get_sample_value("audit_forwarder_delivery_attempts_total", labels)

    assert attempts("retry", "503") == 2
    assert attempts("retry", "timeout") == 1
    assert attempts("dead_letter", "503") == 1
    assert attempts("success", "200") == 2
    assert attempts("retry", "200") is None
    forwarder = {"forwarder": "f"}
    assert registry.get_sample_value("audit_forwarder_events_delivered_total", forwarder) == 2
    count = "audit_forwarder_delivery_duration_seconds_count"
    assert registry.get_sample_value(count, forwarder) == 2
