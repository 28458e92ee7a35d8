"""Token buckets for ``rateLimit``, driven with an injected clock and pause.

The limiter's only waiting is the ``pause`` it is given, so the test passes
one that moves the injected clock instead of sleeping; the last test drives
the limits through a real worker, receiver and clock.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer
from forwarder.delivery.rate_limit import RateLimiter
from forwarder.destinations.options import RateLimitConfig
from tests.delivery.workers import StartWorker, append_events, sample, webhook
from tests.support import ScriptedReceiver, wait_for

THROTTLED = "audit_forwarder_delivery_throttled_seconds_total"


class Clock:
    """A clock moved only by :meth:`pause`, which records every wait."""

    def __init__(self) -> None:
        self.now = 50.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (instantly); never stopping."""
        self.pauses.append(seconds)
        self.now += seconds
        return False


def limiter(
    clock: Clock, throttled: list[float], max_events: int = 10, **limits: float
) -> RateLimiter:
    """A limiter over ``limits`` whose throttled time goes to ``throttled``."""
    return RateLimiter(RateLimitConfig(**limits), max_events, throttled.append, clock)


async def test_no_limit_never_waits() -> None:
    """Without rateLimit keys a request never waits and nothing is counted."""
    clock, throttled = Clock(), []
    rate = limiter(clock, throttled)
    for _ in range(1000):
        assert await rate.acquire(100, clock.pause)
    assert clock.pauses == []
    assert throttled == []
    assert not rate.limited


async def test_requests_per_second_allows_a_second_s_burst_then_the_steady_rate() -> None:
    """requestsPerSecond 10: ten requests at once, then one every 0.1 s, waits counted."""
    clock, throttled = Clock(), []
    rate = limiter(clock, throttled, requests_per_second=10)
    started = clock.now
    for _ in range(30):
        assert await rate.acquire(1, clock.pause)
    assert clock.now - started == pytest.approx(2.0)
    assert len(clock.pauses) == 20
    assert sum(throttled) == pytest.approx(2.0) == rate.throttled_seconds


async def test_events_per_second_counts_the_events_of_each_request() -> None:
    """eventsPerSecond 100 with batches of 50: 1,000 events take 9 s after a 100-event burst."""
    clock, throttled = Clock(), []
    rate = limiter(clock, throttled, max_events=50, events_per_second=100)
    started = clock.now
    for _ in range(20):
        await rate.acquire(50, clock.pause)
    assert clock.now - started == pytest.approx(9.0)


async def test_a_batch_bigger_than_one_second_of_events_still_passes() -> None:
    """eventsPerSecond 5 with maxEvents 100: the bucket holds a full batch, so it is not stuck."""
    clock, throttled = Clock(), []
    rate = limiter(clock, throttled, max_events=100, events_per_second=5)
    await rate.acquire(100, clock.pause)
    await rate.acquire(100, clock.pause)
    assert clock.pauses == [pytest.approx(20.0)]


async def test_a_stop_while_throttled_gives_up_the_request() -> None:
    """When the pause reports a stop, acquire returns False and the wait is still counted."""
    clock, throttled = Clock(), []
    rate = limiter(clock, throttled, requests_per_second=1)
    await rate.acquire(1, clock.pause)

    async def stopping(seconds: float) -> bool:
        clock.now += seconds / 2
        return True

    assert not await rate.acquire(1, stopping)
    assert throttled == [pytest.approx(0.5)]
    assert rate.waiting == 0


async def test_a_rate_limited_forwarder_is_paced_and_reports_the_time_throttled(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """requestsPerSecond 20 with 4 in flight: 40 one-event requests take a second, counted."""
    await append_events(buffer, range(40))
    spec = webhook(
        receiver, ordering="relaxed", max_in_flight=4, rate_limit={"requestsPerSecond": 20}
    )

    started = time.monotonic()
    worker = await start_worker(spec)
    await wait_for(lambda: worker.throttled, message="a request waiting for tokens")
    await wait_for(lambda: len(receiver.delivered) == 40, message="40 delivered")
    elapsed = time.monotonic() - started

    # A burst of 20 (one second's worth), then 20 more at 20 a second.
    assert elapsed >= 0.95
    throttled = sample(registry, THROTTLED, forwarder="f")
    assert 0.8 <= throttled <= elapsed
    assert worker.status.throttled_seconds == pytest.approx(throttled)
    await wait_for(lambda: not worker.throttled, message="no request waiting")
