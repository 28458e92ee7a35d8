"""Fixtures shared by the tests of this folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer
from forwarder.delivery.worker import DeliveryWorker
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.metrics import Metrics
from tests.conftest import ReceiverFactory
from tests.delivery.workers import StartWorker, no_jitter


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
