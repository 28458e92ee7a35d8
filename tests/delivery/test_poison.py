"""Poison events in batches, and statusPolicy, against real receivers and a real buffer.

A receiver refuses the batches that carry a poison event; the worker must
bisect them until each refused event is alone, dead-letter only those, and
deliver everything else in order. Receivers are real aiohttp servers on
loopback scripted per request, the buffer is a real SQLite file, metrics come
from a fresh registry; only the backoff randomness is injected (to 0), so
retries do not wait.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from forwarder.buffer.store import EventBuffer
from forwarder.destinations.options import RetryConfig
from tests.delivery.workers import (
    DEAD,
    DELIVERED,
    POISON,
    StartWorker,
    append_events,
    committed_cursor,
    dead_letters,
    delivered_numbers,
    refuse_poison,
    sample,
    webhook,
)
from tests.support import Reply, ScriptedReceiver, wait_for

ATTEMPTS = "audit_forwarder_delivery_attempts_total"
# Nine events, one batch: only 49 is poison.
MIXED = (2, 3, 4, 5, 6, 49, 7, 8, 9)


def resolved(registry: CollectorRegistry) -> float:
    """How many events ``f`` has delivered or dead-lettered."""
    return sample(registry, DELIVERED, forwarder="f") + sample(registry, DEAD, forwarder="f")


async def test_only_the_16_poison_events_of_800_are_dead_lettered_the_rest_arrive_in_order(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """Batches of 50 refused with 400 are bisected: 16 dead letters, 784 delivered in order."""
    receiver.decide = refuse_poison(400)
    await append_events(buffer, range(800))

    with capture_logs() as logs:
        await start_worker(webhook(receiver, batch={"maxEvents": 50}))
        await wait_for(lambda: resolved(registry) == 800, timeout=60, message="800 resolved")

    assert sample(registry, DEAD, forwarder="f") == 16
    assert delivered_numbers(receiver) == [n for n in range(800) if n not in POISON]
    assert await dead_letters(buffer) == [
        (400, "400", "HTTP 400", f"refused n={n}".encode(), n) for n in sorted(POISON)
    ]
    assert await committed_cursor(buffer, "f") == 800
    # The work is bounded: 16 batches, plus at most two halves per refused part, and a
    # poison event is in at most one refused part per level of the bisection.
    assert len(receiver.attempts) <= 16 + 2 * len(POISON) * math.ceil(math.log2(50))
    splits = [entry for entry in logs if entry["event"] == "batch_split"]
    assert splits
    assert all(entry["status"] == "400" for entry in splits)
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="400") == len(splits)
    history = await buffer.query(
        "SELECT outcome, count(*) FROM delivery_attempts WHERE code = '400'"
        " GROUP BY outcome ORDER BY outcome"
    )
    assert history == [("dead_letter", 16), ("retry", len(splits))]


@pytest.mark.parametrize("status", [400, 409, 413, 422])
async def test_statuses_refusing_the_content_split_down_to_the_refused_event(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    status: int,
) -> None:
    """400, 409, 413 and 422 on a batch bisect it; only the refused event is dead-lettered."""
    receiver.decide = refuse_poison(status)
    await append_events(buffer, MIXED)

    await start_worker(webhook(receiver, batch={"maxEvents": 9}))
    await wait_for(lambda: resolved(registry) == 9)

    assert delivered_numbers(receiver) == list(range(2, 10))
    assert await dead_letters(buffer) == [
        (status, str(status), f"HTTP {status}", b"refused n=49", 49)
    ]
    assert await committed_cursor(buffer, "f") == 9


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 410, 415])
async def test_statuses_refusing_the_request_dead_letter_the_batch_without_splitting(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    status: int,
) -> None:
    """Auth, URL, method and media-type refusals dead-letter the whole batch in one request."""
    receiver.respond(Reply(status, body=b"no"))
    await append_events(buffer, range(1, 21))

    await start_worker(webhook(receiver, batch={"maxEvents": 10}))
    await wait_for(lambda: sample(registry, DELIVERED, forwarder="f") == 10)

    assert len(receiver.attempts) == 2
    assert [n for *_, n in await dead_letters(buffer)] == list(range(1, 11))
    assert delivered_numbers(receiver) == list(range(11, 21))
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code=str(status)) == 0


async def test_a_half_that_gets_a_5xx_is_retried_with_backoff_and_order_is_kept(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """After a split, a 503 on the first half retries that half; nothing behind it goes first."""
    refuse = refuse_poison(400)
    answered: list[int] = []

    async def decide(request: web.Request) -> Reply:
        answered.append(len(json.loads(await request.read())))
        if len(answered) == 2:  # the first half, right after the split
            return Reply(503, body=b"busy")
        return await refuse(request)

    receiver.decide = decide
    await append_events(buffer, MIXED)

    await start_worker(webhook(receiver, batch={"maxEvents": 9}))
    await wait_for(lambda: resolved(registry) == 9)

    assert answered[:3] == [9, 4, 4]  # the whole batch, its first half, that half again
    assert delivered_numbers(receiver) == list(range(2, 10))
    assert [n for *_, n in await dead_letters(buffer)] == [49]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="503") == 1


# -- statusPolicy ------------------------------------------------------------------------


async def test_policy_retry_makes_a_400_retried_in_place_honouring_retry_after(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """statusPolicy.retry: [400] resends the same batch after Retry-After instead of splitting."""
    receiver.respond(Reply(400, headers={"Retry-After": "1"}, body=b"later"))
    await append_events(buffer, range(2, 6))
    started = time.monotonic()

    await start_worker(
        webhook(
            receiver,
            batch={"maxEvents": 4},
            retry=RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=30),
            status_policy={"retry": [400]},
        )
    )
    await wait_for(lambda: sample(registry, DELIVERED, forwarder="f") == 4)

    assert time.monotonic() - started >= 1.0
    assert [r.body for r in receiver.attempts] == [receiver.attempts[0].body] * 2
    assert delivered_numbers(receiver) == [2, 3, 4, 5]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="retry", code="400") == 1
    assert await dead_letters(buffer) == []


@pytest.mark.parametrize("status", [503, 400])
async def test_policy_dead_letter_gives_up_on_the_whole_batch_at_once(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    status: int,
) -> None:
    """statusPolicy.deadLetter: a 503 is not retried and a 400 does not split: one request."""
    receiver.respond(Reply(status, body=b"give up"))
    await append_events(buffer, range(2, 10))

    await start_worker(
        webhook(receiver, batch={"maxEvents": 4}, status_policy={"deadLetter": [status]})
    )
    await wait_for(lambda: sample(registry, DELIVERED, forwarder="f") == 4)

    assert len(receiver.attempts) == 2
    reason = f"HTTP {status} (statusPolicy)"
    assert await dead_letters(buffer) == [
        (status, str(status), reason, b"give up", n) for n in range(2, 6)
    ]
    assert delivered_numbers(receiver) == [6, 7, 8, 9]
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="dead_letter", code=str(status)) == 1


async def test_policy_success_counts_a_404_as_delivered_without_validating_its_body(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """statusPolicy.success: [404] acknowledges the batch; validators only judge 2xx bodies."""
    receiver.respond(Reply(404, body=b"not found"))
    await append_events(buffer, range(2, 6))

    await start_worker(
        webhook(
            receiver,
            batch={"maxEvents": 2},
            status_policy={"success": [404]},
            response_validators=[{"jsonPath": "$.ok", "expected": [True]}],
        )
    )
    await wait_for(lambda: sample(registry, DELIVERED, forwarder="f") == 4)

    assert len(receiver.attempts) == 2
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="success", code="404") == 1
    assert sample(registry, ATTEMPTS, forwarder="f", outcome="success", code="200") == 1
    assert await dead_letters(buffer) == []
    assert await committed_cursor(buffer, "f") == 4
