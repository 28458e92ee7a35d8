"""Backoff and Retry-After: full jitter under a cap, honoured delays, and stopping mid-wait."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer
from forwarder.delivery.backoff import Backoff
from forwarder.destinations.options import RetryConfig
from forwarder.destinations.webhook.sending import (
    OutgoingRequest,
    parse_retry_after,
    send_request,
)
from forwarder.errors import RetryableDeliveryError
from tests.delivery.workers import (
    ATTEMPTS,
    StartWorker,
    append,
    body,
    committed_cursor,
    full_jitter,
    no_jitter,
    sample,
    webhook,
)
from tests.support import Reply, ScriptedReceiver, wait_for

NOW = 1_700_000_000.0


def http_date(timestamp: float) -> str:
    """``timestamp`` as an IMF-fixdate HTTP-date."""
    return email.utils.format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (http_date(NOW + 30), 30.0),
        (http_date(NOW - 30), 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("²", None),
        ("", None),
        (None, None),
    ],
    ids=[
        "seconds",
        "padded",
        "zero",
        "date",
        "past-date",
        "garbage",
        "negative",
        "fraction",
        "superscript",
        "empty",
        "absent",
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is delta-seconds or an HTTP-date (never negative); anything else is ignored."""
    assert parse_retry_after(value, NOW) == expected


def test_backoff_is_full_jitter_under_an_exponential_capped_ceiling() -> None:
    """delay(n) = rng() * min(max, initial * 2**(n-1)), for any rng value in [0, 1]."""
    policy = RetryConfig(initial_backoff_seconds=0.5, max_backoff_seconds=10.0)
    ceilings = {1: 0.5, 2: 1.0, 3: 2.0, 4: 4.0, 5: 8.0, 6: 10.0, 7: 10.0, 1000: 10.0}
    for n, ceiling in ceilings.items():
        assert Backoff(policy, full_jitter).delay(n) == ceiling
        assert Backoff(policy, no_jitter).delay(n) == 0.0
        assert Backoff(policy, lambda: 0.25).delay(n) == 0.25 * ceiling


def test_backoff_honours_retry_after_capped_at_max() -> None:
    """A Retry-After replaces the jittered delay but never exceeds max_backoff_seconds."""
    backoff = Backoff(RetryConfig(initial_backoff_seconds=1, max_backoff_seconds=60), no_jitter)
    assert backoff.delay(1, retry_after=30.0) == 30.0
    assert backoff.delay(5, retry_after=0.0) == 0.0
    assert backoff.delay(1, retry_after=3600.0) == 60.0


@pytest.mark.parametrize("header", ["Retry-After", "retry-after", "RETRY-AFTER"])
async def test_send_request_reads_retry_after_in_any_case(
    receiver: ScriptedReceiver, header: str
) -> None:
    """send_request classifies 429 as retryable and reads Retry-After whatever its case."""
    receiver.respond(Reply(429, headers={header: "7"}, body=b"slow down"))
    request = OutgoingRequest("POST", receiver.url + "in", {}, body(1))

    async with aiohttp.ClientSession() as session:
        with pytest.raises(RetryableDeliveryError) as raised:
            await send_request(session, request, timeout_seconds=5)

    assert (raised.value.code, raised.value.status) == ("429", 429)
    assert raised.value.retry_after == 7.0
    assert raised.value.body == b"slow down"


async def test_retry_after_delays_the_retry(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
) -> None:
    """Retry-After: 1 holds the retry back a second although the jittered backoff would be 0."""
    receiver.respond(Reply(503, headers={"Retry-After": "1"}))
    await append(buffer, body(1))
    started = time.monotonic()

    await start_worker(webhook(receiver, retry=RetryConfig(max_backoff_seconds=30)))
    await wait_for(lambda: len(receiver.delivered) == 1)

    assert time.monotonic() - started >= 1.0
    assert len(receiver.attempts) == 2


@pytest.mark.parametrize("value", ["soon", "²"])
async def test_unusable_retry_after_falls_back_to_backoff(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    value: str,
) -> None:
    """A Retry-After that is neither seconds nor a date is ignored: plain backoff, then delivery."""
    receiver.respond(Reply(503, headers={"Retry-After": value}))
    await append(buffer, body(1))

    worker = await start_worker(webhook(receiver))
    await wait_for(lambda: len(receiver.delivered) == 1)

    assert [r.body for r in receiver.attempts] == [body(1), body(1)]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="503") == 1
    assert worker.task is not None
    assert not worker.task.done()


async def test_retry_after_beyond_max_backoff_is_capped(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
) -> None:
    """A Retry-After of an hour waits only max_backoff_seconds: the event is delivered promptly."""
    receiver.respond(Reply(429, headers={"Retry-After": "3600"}))
    await append(buffer, body(1))

    await start_worker(webhook(receiver))  # max_backoff_seconds=0.05
    await wait_for(lambda: len(receiver.delivered) == 1, timeout=10)

    assert [r.body for r in receiver.attempts] == [body(1), body(1)]


# -- stop ------------------------------------------------------------------------------


async def test_stop_during_backoff_is_immediate_and_keeps_the_event_pending(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """A worker waiting out a 30 s backoff stops at once; its event is not acknowledged."""
    receiver.default = Reply(503)
    await append(buffer, body(1))
    slow_retry = RetryConfig(initial_backoff_seconds=30, max_backoff_seconds=30)
    worker = await start_worker(webhook(receiver, retry=slow_retry), rng=full_jitter)
    await wait_for(lambda: worker.status.consecutive_failures == 1)

    started = time.monotonic()
    finished = await worker.stop(grace_seconds=20)

    assert finished is True
    assert time.monotonic() - started < 5  # far below both the backoff and the grace
    assert worker.task is not None
    assert worker.task.done()
    assert len(receiver.attempts) == 1
    assert await committed_cursor(buffer, "f") == 0
    assert [e.body for e in await buffer.read_after("f", 0, 10)] == [body(1)]


async def test_stop_lets_an_in_flight_request_finish_within_grace(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """A request in flight when stop() is called finishes, is acked, and nothing more is sent."""
    receiver.default = Reply(200, delay=0.5)
    await append(buffer, body(1), body(2))
    worker = await start_worker(webhook(receiver))
    await wait_for(lambda: len(receiver.attempts) == 1)

    finished = await worker.stop(grace_seconds=10)

    assert finished is True
    assert [r.body for r in receiver.delivered] == [body(1)]
    assert len(receiver.attempts) == 1
    assert await committed_cursor(buffer, "f") == 1


async def test_stop_cancels_a_request_slower_than_the_grace(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """A request still in flight when the grace runs out is cancelled; its event stays pending."""
    receiver.default = Reply(200, delay=10.0)
    await append(buffer, body(1))
    worker = await start_worker(webhook(receiver, timeout_seconds=30))
    await wait_for(lambda: len(receiver.attempts) == 1)

    finished = await worker.stop(grace_seconds=0.2)

    assert finished is False
    assert worker.task is not None
    assert worker.task.cancelled()
    assert receiver.delivered == []
    assert await committed_cursor(buffer, "f") == 0


# -- isolation ----------------------------------------------------------------------------
