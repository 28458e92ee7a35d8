"""What the delivery tests share: a webhook spec, a registry, sample events, jitter-free backoff."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer, EventRecord
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.options import RetryConfig
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.ingest.ids import IdGenerator
from tests.support import ScriptedReceiver

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
