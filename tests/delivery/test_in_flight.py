"""Several requests in flight per forwarder, against real receivers and a real buffer.

With ``ordering: relaxed`` a forwarder has up to ``maxInFlight`` requests
outstanding. Everything it promised one request at a time must still hold:
the cursor never passes a batch that is not resolved, bisection and dead
letters, retry limits, ``Retry-After`` and stable ``webhook-id`` s. Receivers
are real aiohttp servers on loopback whose answers are computed per request
(some answer slowly, to keep requests in flight); the buffer is a real
SQLite file; only the backoff randomness is injected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer
from forwarder.destinations.options import RetryConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from tests.delivery.workers import (
    DEAD,
    DELIVERED,
    LIMIT,
    POISON,
    Overlap,
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

IN_FLIGHT = "audit_forwarder_delivery_in_flight"
SIGNING_SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


async def ok(_: web.Request) -> Reply:
    """Always 200."""
    return Reply(200)


async def numbers(request: web.Request) -> list[int]:
    """The ``n`` of every event in a JSON-array request body."""
    return [e["n"] for e in json.loads(await request.read())]


def resolved(registry: CollectorRegistry) -> float:
    """Events delivered or dead-lettered by ``f``."""
    return sample(registry, DELIVERED, forwarder="f") + sample(registry, DEAD, forwarder="f")


def relaxed(
    receiver: ScriptedReceiver, in_flight: int = 4, max_events: int = 10, **options: Any
) -> WebhookForwarderConfig:
    """A relaxed-ordering spec with ``in_flight`` requests and batches of ``max_events``."""
    return webhook(
        receiver,
        ordering="relaxed",
        max_in_flight=in_flight,
        batch={"maxEvents": max_events, "maxWaitMs": 20},
        **options,
    )


# -- in flight and the cursor ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ordering", "in_flight", "expected"), [("strict", None, 1), ("relaxed", 4, 4)]
)
async def test_requests_overlap_up_to_max_in_flight_and_the_gauges_show_it(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
    ordering: str,
    in_flight: int | None,
    expected: int,
) -> None:
    """A slow receiver sees exactly maxInFlight requests at once (1 when strict); gauges agree."""
    overlap = Overlap(ok, delay=0.1)
    receiver.decide = overlap
    await append_events(buffer, range(200))
    spec = webhook(receiver, ordering=ordering, max_in_flight=in_flight, batch={"maxEvents": 10})

    await start_worker(spec)
    assert sample(registry, LIMIT, forwarder="f") == expected
    await wait_for(lambda: sample(registry, IN_FLIGHT, forwarder="f") == expected)
    await wait_for(lambda: resolved(registry) == 200, timeout=30)

    assert overlap.peak == expected
    assert sorted(delivered_numbers(receiver)) == list(range(200))
    await wait_for(lambda: sample(registry, IN_FLIGHT, forwarder="f") == 0)
    assert await committed_cursor(buffer, "f") == 200


async def test_the_cursor_waits_for_a_failing_batch_while_later_batches_are_delivered(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """Batch 1 fails with 503 while 2-5 are delivered: the cursor stays at 0, then jumps to 50."""
    release = asyncio.Event()

    async def first_batch_fails_until_released(request: web.Request) -> Reply:
        if 0 in await numbers(request) and not release.is_set():
            return Reply(503)
        return Reply(200)

    receiver.decide = first_batch_fails_until_released
    await append_events(buffer, range(50))

    await start_worker(relaxed(receiver))
    await wait_for(lambda: len(delivered_numbers(receiver)) == 40, message="batches 2-5")
    assert await committed_cursor(buffer, "f") == 0
    assert sorted(delivered_numbers(receiver)) == list(range(10, 50))

    release.set()
    await wait_for(lambda: len(delivered_numbers(receiver)) == 50, message="batch 1")
    # A retried batch arrives after later ones: the documented cost of relaxed ordering.
    assert delivered_numbers(receiver)[-10:] == list(range(10))
    await wait_for(lambda: committed_cursor(buffer, "f"), message="any commit")
    assert await committed_cursor(buffer, "f") == 50


# -- what one request at a time promised ------------------------------------------------


async def test_poison_events_are_isolated_by_bisection_with_requests_in_flight(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """800 events, 16 poison, 4 in flight: only the 16 are dead-lettered, the rest arrive once."""
    overlap = Overlap(refuse_poison(400), delay=0.005)
    receiver.decide = overlap
    await append_events(buffer, range(800))

    await start_worker(relaxed(receiver, max_events=50))
    await wait_for(lambda: resolved(registry) == 800, timeout=60, message="800 resolved")

    assert overlap.peak > 1
    delivered = delivered_numbers(receiver)
    assert sorted(delivered) == [n for n in range(800) if n not in POISON]
    assert len(delivered) == len(set(delivered))
    assert sorted(letter[4] for letter in await dead_letters(buffer)) == sorted(POISON)
    assert await committed_cursor(buffer, "f") == 800


async def test_413_splits_every_batch_down_to_what_the_receiver_takes_with_requests_in_flight(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """A receiver taking at most 8 events answers 413 above: all 300 arrive once, none dead."""

    async def at_most_eight(request: web.Request) -> Reply:
        return Reply(413) if len(await numbers(request)) > 8 else Reply(200)

    overlap = Overlap(at_most_eight, delay=0.005)
    receiver.decide = overlap
    await append_events(buffer, range(300))

    await start_worker(relaxed(receiver, max_events=50))
    await wait_for(lambda: resolved(registry) == 300, timeout=60, message="300 resolved")

    assert overlap.peak > 1
    assert sorted(delivered_numbers(receiver)) == list(range(300))
    assert all(len(request.json()) <= 8 for request in receiver.delivered)
    assert await dead_letters(buffer) == []
    assert await committed_cursor(buffer, "f") == 300


async def test_a_later_batch_dead_lettered_does_not_move_the_cursor_past_an_earlier_one(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """Batch 3 gets 401 while batch 1 is retried: its dead letter leaves the cursor at 0."""
    release = asyncio.Event()

    async def decide(request: web.Request) -> Reply:
        sent = await numbers(request)
        if 0 in sent and not release.is_set():
            return Reply(503)
        if 20 in sent:
            return Reply(401, body=b"no")
        return Reply(200)

    receiver.decide = decide
    await append_events(buffer, range(50))

    await start_worker(relaxed(receiver))
    await wait_for(lambda: sample(registry, DEAD, forwarder="f") == 10, message="batch 3 dead")
    await wait_for(lambda: len(delivered_numbers(receiver)) == 30, message="batches 2, 4, 5")
    assert await committed_cursor(buffer, "f") == 0
    assert [letter[4] for letter in await dead_letters(buffer)] == list(range(20, 30))

    release.set()
    await wait_for(lambda: resolved(registry) == 50, message="batch 1")
    assert await committed_cursor(buffer, "f") == 50


async def test_retry_limits_dead_letter_one_batch_while_the_others_are_delivered(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """maxAttempts 3 with 4 in flight: the always-503 batch is tried 3 times, then dead."""

    async def second_batch_unavailable(request: web.Request) -> Reply:
        return Reply(503) if 10 in await numbers(request) else Reply(200)

    overlap = Overlap(second_batch_unavailable, delay=0.01)
    receiver.decide = overlap
    await append_events(buffer, range(60))
    retry = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05, max_attempts=3)

    await start_worker(relaxed(receiver, retry=retry))
    await wait_for(lambda: resolved(registry) == 60, message="60 resolved")

    assert overlap.peak > 1
    tries = Counter(request.json()[0]["n"] for request in receiver.attempts)
    assert tries[10] == 3
    assert sorted(delivered_numbers(receiver)) == [n for n in range(60) if not 10 <= n < 20]
    letters = await dead_letters(buffer)
    assert [letter[4] for letter in letters] == list(range(10, 20))
    assert {letter[1] for letter in letters} == {"503"}
    assert await committed_cursor(buffer, "f") == 60


async def test_retry_after_holds_every_new_request_of_the_forwarder(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """A 429 with Retry-After: 1 on one request: no new request for a second, from any slot."""
    arrivals: list[tuple[float, int, int]] = []  # (time, first n, status)

    async def first_request_rate_limited(request: web.Request) -> Reply:
        sent = await numbers(request)
        status = 429 if not arrivals else 200
        arrivals.append((time.monotonic(), sent[0], status))
        if status == 429:
            return Reply(429, headers={"Retry-After": "1"})
        return Reply(200, delay=0.05)  # slow enough that the others outlast the refusal

    receiver.decide = first_request_rate_limited
    await append_events(buffer, range(100))
    retry = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=5)

    await start_worker(relaxed(receiver, in_flight=2, retry=retry))
    await wait_for(lambda: len(delivered_numbers(receiver)) == 100, message="100 delivered")

    refused_at = arrivals[0][0]
    # The one request already in flight beside it may land just after; nothing else
    # may start until the second has passed.
    early = [a for a in arrivals[1:] if refused_at + 0.1 < a[0] < refused_at + 0.95]
    assert early == []
    retried = [a for a in arrivals[1:] if a[1] == 0]
    assert len(retried) == 1
    assert retried[0][0] >= refused_at + 0.95


async def test_webhook_id_is_stable_per_batch_across_retries_with_requests_in_flight(
    buffer: EventBuffer, receiver: ScriptedReceiver, start_worker: StartWorker
) -> None:
    """Each batch's first attempt gets 503: its retry carries the same webhook-id, others differ."""
    seen: dict[bytes, int] = defaultdict(int)

    async def fail_each_body_once(request: web.Request) -> Reply:
        body = await request.read()
        seen[body] += 1
        return Reply(503 if seen[body] == 1 else 200)

    overlap = Overlap(fail_each_body_once, delay=0.01)
    receiver.decide = overlap
    await append_events(buffer, range(80))

    await start_worker(relaxed(receiver, signing_secret=SIGNING_SECRET))
    await wait_for(lambda: len(delivered_numbers(receiver)) == 80, message="80 delivered")

    assert overlap.peak > 1
    ids_per_batch: dict[int, set[str]] = defaultdict(set)
    for request in receiver.attempts:
        ids_per_batch[request.json()[0]["n"]].add(request.headers["webhook-id"])
    assert sorted(ids_per_batch) == list(range(0, 80, 10))
    assert all(len(ids) == 1 for ids in ids_per_batch.values())
    assert len(set.union(*ids_per_batch.values())) == 8
    assert all(count == 2 for count in seen.values())
