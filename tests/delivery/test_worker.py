"""Delivery workers against real scripted receivers and a real SQLite buffer.

Only the backoff randomness (``rng``) is injected, so retries happen without
waiting; receivers are real aiohttp servers on loopback, the buffer is a real
file in ``tmp_path``, and metrics are read from a fresh registry per test.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.backoff import Backoff
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.options import RetryConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.sending import (
    USER_AGENT,
    OutgoingRequest,
    parse_retry_after,
    send_request,
)
from forwarder.errors import RetryableDeliveryError
from forwarder.ingest.ids import IdGenerator
from forwarder.metrics import Metrics
from tests.conftest import ReceiverFactory
from tests.support import Reply, ScriptedReceiver, wait_for

StartWorker = Callable[..., Awaitable[DeliveryWorker]]
FAST_RETRY = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
ATTEMPTS = "audit_forwarder_delivery_attempts_total"


def no_jitter() -> float:
    """Backoff randomness that makes every jittered delay 0."""
    return 0.0


def full_jitter() -> float:
    """Backoff randomness that makes every jittered delay its ceiling."""
    return 1.0


def webhook(receiver: ScriptedReceiver, name: str = "f", **options: Any) -> WebhookForwarderConfig:
    """A forwarder spec posting to ``<receiver>/in`` with fast retries unless overridden."""
    options.setdefault("retry", FAST_RETRY)
    return WebhookForwarderConfig(name=name, kind="webhook", uri=receiver.url + "in", **options)


def body(n: int) -> bytes:
    """The stored bytes of event ``n``."""
    return f'{{"n": {n}}}'.encode()


_ids = IdGenerator()


async def append(buffer: EventBuffer, *bodies: bytes) -> None:
    """Append events with generated ids, as ingest does."""
    await buffer.append([EventRecord(_ids.new(), "test.event", b, False) for b in bodies])


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    return registry.get_sample_value(name, labels) or 0.0


async def committed_cursor(buffer: EventBuffer, name: str) -> int:
    """The cursor once every ack queued so far has been committed."""
    await buffer.execute([])  # queued behind any pending ack: they share or precede this commit
    return buffer.cursor(name)


async def dead_letters(buffer: EventBuffer) -> list[tuple[Any, ...]]:
    """The dead-letter rows, oldest first."""
    return await buffer.query(
        "SELECT forwarder, seq, status, code, response_body, body FROM dead_letters ORDER BY id"
    )


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """A real buffer with one forwarder, ``f``; closed at teardown."""
    buffer = EventBuffer(tmp_path / "buffer.db")
    await buffer.open(["f"])
    yield buffer
    await buffer.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry."""
    return CollectorRegistry()


@pytest.fixture
async def start_worker(
    buffer: EventBuffer, registry: CollectorRegistry, make_receiver: ReceiverFactory
) -> AsyncIterator[StartWorker]:
    """Start real workers on ``buffer``; stopped before the buffer and receivers go away."""
    metrics = Metrics(registry)
    workers: list[DeliveryWorker] = []

    async def start(
        spec: WebhookForwarderConfig, rng: Callable[[], float] = no_jitter
    ) -> DeliveryWorker:
        worker = DeliveryWorker(spec, buffer, metrics, rng=rng)
        workers.append(worker)
        await worker.start()
        return worker

    yield start
    for worker in workers:
        await worker.stop(0)


# -- the request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "token"),
    [("POST", None), ("PUT", "s3cret-token"), ("PATCH", "another")],
)
async def test_request_has_configured_method_url_headers_and_stored_body(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    method: str,
    token: str | None,
) -> None:
    """The request uses the configured method and URL, our headers, and the stored bytes as is."""
    stored = [b'{"z": 1,   "a": "caf\\u00e9"}', '{"msg": "café ✓"}'.encode(), body(3)]
    await append(buffer, *stored)

    await start_worker(webhook(receiver, method=method, token=token))
    await wait_for(lambda: len(receiver.delivered) == 3)

    assert [request.body for request in receiver.delivered] == stored
    for request in receiver.delivered:
        assert request.method == method
        assert request.path == "/in"
        assert request.headers["User-Agent"] == USER_AGENT == "audit-forwarder/1.0"
        assert request.headers["Content-Type"] == "application/json"
        if token is None:
            assert "Authorization" not in request.headers
        else:
            assert request.headers["Authorization"] == f"Bearer {token}"
    assert len(receiver.attempts) == 3


# -- classification -------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_status_resends_same_body_and_keeps_order(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    status: int,
) -> None:
    """408, 429 and 5xx are retried with the same body; later events wait and order is kept."""
    receiver.respond(Reply(status, body=b"busy"), Reply(status, body=b"busy"))
    await append(buffer, body(1), body(2), body(3))

    await start_worker(webhook(receiver))
    await wait_for(
        lambda: sample(registry, ATTEMPTS, forwarder="f", outcome="success", code="200") == 3
    )

    assert [r.body for r in receiver.attempts] == [body(1), body(1), body(1), body(2), body(3)]
    assert [r.body for r in receiver.delivered] == [body(1), body(2), body(3)]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code=str(status)) == 2
    assert await dead_letters(buffer) == []
    assert await committed_cursor(buffer, "f") == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 302, 307])
async def test_permanent_status_dead_letters_and_moves_on(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    status: int,
) -> None:
    """Other 4xx and unfollowed 3xx dead-letter the event with the answer; the next goes out."""
    answer = b"r" * 5000
    receiver.respond(Reply(status, headers={"Location": receiver.url + "elsewhere"}, body=answer))
    await append(buffer, body(1), body(2))

    await start_worker(webhook(receiver))
    await wait_for(
        lambda: sample(registry, "audit_forwarder_events_delivered_total", forwarder="f")
    )

    assert await dead_letters(buffer) == [("f", 1, status, str(status), answer[:4096], body(1))]
    assert [r.body for r in receiver.attempts] == [body(1), body(2)]
    assert [r.path for r in receiver.attempts] == ["/in", "/in"]  # the redirect was not followed
    assert [r.body for r in receiver.delivered] == [body(2)]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="dead_letter", code=str(status)) == 1
    assert sample(registry, "audit_forwarder_events_dead_lettered_total", forwarder="f") == 1
    assert await committed_cursor(buffer, "f") == 2


async def test_connection_refused_is_retried_until_the_receiver_is_back(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """A refused connection is a retryable connection_error; delivery resumes on restart."""
    await receiver.stop()
    await append(buffer, body(1), body(2))

    await start_worker(webhook(receiver), rng=full_jitter)
    await wait_for(
        lambda: (
            sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="connection_error") >= 2
        )
    )
    assert receiver.attempts == []
    assert await committed_cursor(buffer, "f") == 0

    await receiver.start()
    await wait_for(lambda: len(receiver.delivered) == 2)

    assert [r.body for r in receiver.delivered] == [body(1), body(2)]
    assert await dead_letters(buffer) == []


async def test_reply_slower_than_timeout_is_retried_as_timeout(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """No answer within timeout_seconds counts as a retryable timeout and is sent again."""
    receiver.respond(Reply(200, delay=5.0))
    await append(buffer, body(1))

    await start_worker(webhook(receiver, timeout_seconds=0.2))
    await wait_for(
        lambda: sample(registry, "audit_forwarder_events_delivered_total", forwarder="f")
    )

    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="timeout") == 1
    assert [r.body for r in receiver.attempts] == [body(1), body(1)]
    assert [r.body for r in receiver.delivered] == [body(1)]


# -- metrics and status -----------------------------------------------------------------


async def test_metrics_after_success_retry_and_dead_letter(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """Attempts by outcome and code, counters, last success and histograms follow real traffic."""
    receiver.respond(Reply(503), Reply(200), Reply(400))  # event 1: 503 then 200; event 2: 400
    await append(buffer, body(1), body(2), body(3))
    before = time.time()

    worker = await start_worker(webhook(receiver))
    await wait_for(
        lambda: sample(registry, "audit_forwarder_events_delivered_total", forwarder="f") == 2
    )

    def attempts(outcome: str, code: str) -> float:
        return sample(registry, ATTEMPTS, forwarder="f", outcome=outcome, code=code)

    assert attempts("success", "200") == 2
    assert attempts("retry", "503") == 1
    assert attempts("dead_letter", "400") == 1
    assert sample(registry, "audit_forwarder_events_dead_lettered_total", forwarder="f") == 1
    last_success = sample(registry, "audit_forwarder_last_success_timestamp_seconds", forwarder="f")
    assert before <= last_success <= time.time()
    duration = "audit_forwarder_delivery_duration_seconds"
    # Every request is timed, whatever its answer: 503, 200, 400, 200.
    assert sample(registry, f"{duration}_count", forwarder="f") == len(receiver.attempts) == 4
    assert sample(registry, f"{duration}_sum", forwarder="f") > 0
    assert sample(registry, "audit_forwarder_ingest_to_delivery_seconds_count", forwarder="f") == 2
    assert worker.status.pending == 0
    assert worker.status.dead_lettered == 1
    assert worker.status.last_status == "200"
    assert worker.oldest_pending_age() == 0.0


async def test_pending_and_oldest_age_while_failing_and_after_recovery(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """pending counts events before and after start; oldest age grows while failing, 0 after."""
    receiver.default = Reply(503)
    await append(buffer, body(1), body(2))

    worker = await start_worker(webhook(receiver), rng=full_jitter)
    assert worker.status.pending == 2
    await append(buffer, body(3))
    assert worker.status.pending == 3
    await wait_for(lambda: len(receiver.attempts) >= 2)
    assert worker.status.pending == 3
    assert worker.oldest_pending_age() > 0
    assert worker.status.consecutive_failures >= 2

    receiver.default = Reply(200)
    await wait_for(lambda: worker.status.pending == 0)

    assert worker.oldest_pending_age() == 0.0
    assert worker.status.consecutive_failures == 0
    assert [r.body for r in receiver.delivered] == [body(1), body(2), body(3)]


# -- Retry-After and backoff -------------------------------------------------------------

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


async def test_a_failing_receiver_does_not_delay_another_forwarder(
    buffer: EventBuffer, make_receiver: ReceiverFactory, start_worker: StartWorker
) -> None:
    """While one forwarder's receiver keeps failing, the other gets every event in order."""
    broken, healthy = await make_receiver(), await make_receiver()
    broken.default = Reply(503)
    await buffer.register_forwarders(["f", "g"])
    failing = await start_worker(webhook(broken, name="f"), rng=full_jitter)
    await start_worker(webhook(healthy, name="g"))

    bodies = [body(n) for n in range(50)]
    for n in range(0, 50, 10):
        await append(buffer, *bodies[n : n + 10])
    await wait_for(lambda: len(healthy.delivered) == 50)

    assert [r.body for r in healthy.delivered] == bodies
    assert broken.delivered == []
    assert {r.body for r in broken.attempts} == {body(0)}
    assert failing.status.pending == 50
    assert await committed_cursor(buffer, "g") == 50
    assert buffer.cursor("f") == 0


async def test_idle_worker_does_not_spin_on_replays_for_another_forwarder(
    tmp_path: Path, receiver: ScriptedReceiver, registry: CollectorRegistry
) -> None:
    """Rows replayed only for f do not keep g's worker re-reading the buffer while it is idle."""
    buffer = EventBuffer(tmp_path / "replays.db")
    await buffer.open(["f", "g"])
    worker = DeliveryWorker(webhook(receiver, name="g"), buffer, Metrics(registry), rng=no_jitter)
    try:
        reads: list[str] = []
        assert buffer._reader is not None
        # SQLite's statement trace on the read connection: every disk read delivery does.
        await buffer._reader.set_trace_callback(reads.append)
        replays = [EventRecord(f"r{n}", None, body(n), False, only_forwarder="f") for n in range(5)]
        await buffer.append([EventRecord("e1", None, body(1), False), *replays])
        await worker.start()
        await wait_for(lambda: len(receiver.delivered) == 1)
        await buffer.execute([])  # g has read past e1 by now and found only f's rows

        reads_when_idle = len(reads)
        for _ in range(20):
            await buffer.execute([])  # commits that add no event: nothing for g to read
        assert len(reads) == reads_when_idle

        await append(buffer, body(7))
        await wait_for(lambda: len(receiver.delivered) == 2)
        assert [r.body for r in receiver.delivered] == [body(1), body(7)]
    finally:
        await worker.stop(0)
        await buffer.close()
