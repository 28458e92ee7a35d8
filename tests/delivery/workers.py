"""What the delivery tests share: specs, registries, sample and poison events, receivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.options import RetryConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.ingest.ids import IdGenerator
from tests.support import Reply, ScriptedReceiver

StartWorker = Callable[..., Awaitable[DeliveryWorker]]
FAST_RETRY = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
ATTEMPTS = "audit_forwarder_delivery_attempts_total"
Decide = Callable[[web.Request], Awaitable[Reply]]


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


DELIVERED = "audit_forwarder_events_delivered_total"


DEAD = "audit_forwarder_events_dead_lettered_total"


# 16 poison events among 800: first and last of a batch, neighbours across a
# batch boundary, four in a row, and lone ones.
POISON = frozenset({0, 49, 50, 51, 100, 101, 102, 103, 260, 333, 399, 400, 555, 612, 700, 799})


def event(n: int) -> bytes:
    """The stored bytes of event ``n``; poison when ``n`` is in ``POISON``."""
    return json.dumps({"n": n, **({"poison": True} if n in POISON else {})}).encode()


async def append_events(buffer: EventBuffer, numbers: Iterable[int]) -> None:
    """Append events ``numbers`` in one commit, as one ingest request would."""
    await buffer.append([EventRecord(_ids.new(), "test.event", event(n), False) for n in numbers])


def refuse_poison(status: int = 400) -> Decide:
    """A receiver decision: ``status`` naming the first poison event of a batch, else 200."""

    async def decide(request: web.Request) -> Reply:
        numbers = [e["n"] for e in json.loads(await request.read()) if e.get("poison")]
        if numbers:
            return Reply(status, body=f"refused n={numbers[0]}".encode())
        return Reply(200)

    return decide


def delivered_numbers(receiver: ScriptedReceiver) -> list[int]:
    """The ``n`` of every delivered event, in the order the receiver accepted them."""
    return [e["n"] for batch in receiver.events() for e in batch]


async def dead_letters(buffer: EventBuffer) -> list[tuple[int, str, str, bytes, int]]:
    """(status, code, reason, response body, n) of every dead letter, oldest first."""
    rows = await buffer.query(
        "SELECT status, code, reason, response_body, body FROM dead_letters ORDER BY id"
    )
    return [
        (status, code, reason, bytes(answer), json.loads(body)["n"])
        for status, code, reason, answer, body in rows
    ]


LIMIT = "audit_forwarder_delivery_concurrency_limit"


class Overlap:
    """Wraps a receiver decision, counting how many requests it was answering at once."""

    def __init__(self, decide: Decide, delay: float = 0.0) -> None:
        self.decide = decide
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def __call__(self, request: web.Request) -> Reply:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            reply = await self.decide(request)
            await asyncio.sleep(self.delay)  # a receiver that takes this long to answer
            return reply
        finally:
            self.active -= 1
