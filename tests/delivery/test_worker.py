"""Delivery workers against real scripted receivers and a real SQLite buffer.

Only the backoff randomness (``rng``) is injected, so retries happen without
waiting; receivers are real aiohttp servers on loopback, the buffer is a real
file in ``tmp_path``, and metrics are read from a fresh registry per test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.webhook.sending import (
    USER_AGENT,
)
from forwarder.metrics import Metrics
from tests.conftest import ReceiverFactory
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


async def dead_letters(buffer: EventBuffer) -> list[tuple[Any, ...]]:
    """The dead-letter rows, oldest first."""
    return await buffer.query(
        "SELECT forwarder, seq, status, code, response_body, body FROM dead_letters ORDER BY id"
    )


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
