"""A forwarder's rate limits: token buckets for events and for requests per second.

Receivers with quotas (Datadog, Splunk Cloud, Logz.io) count events, or
requests, per second. ``rateLimit.eventsPerSecond`` and
``rateLimit.requestsPerSecond`` are token buckets refilled continuously at
that rate. Each holds one second's worth, and the events bucket at least
``batch.maxEvents`` so that a full batch can always pass (a bucket smaller
than a batch would stop the forwarder for good), the requests bucket at
least one request. After an idle spell a burst of one bucket goes out at
once; then the steady rate.

Every request takes its tokens before it is sent, retries and bisected
halves included: the receiver counts what it gets, not what we meant to
send. Requests wait their turn one after another (a lock), so the time
spent waiting is wall time the forwarder was held back, counted once (in
``audit_forwarder_delivery_throttled_seconds_total`` and the ``throttled``
fields of ``status``), not once per request in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from forwarder.destinations.options import RateLimitConfig

EPSILON_SECONDS = 1e-6


class TokenBucket:
    """``rate`` tokens a second, holding at most ``capacity``; starts full."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are there (0 when they are now)."""
        self._refill(now)
        missing = min(amount, self.capacity) - self._tokens
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        """Take ``amount`` tokens (after :meth:`wait_time` said 0)."""
        self._refill(now)
        self._tokens -= min(amount, self.capacity)


class RateLimiter:
    """The buckets of one forwarder, and how long it has waited for them."""

    def __init__(
        self,
        limits: RateLimitConfig,
        max_events: int,
        on_throttled: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        now = clock()
        self._events: TokenBucket | None = None
        self._requests: TokenBucket | None = None
        if limits.events_per_second is not None:
            rate = limits.events_per_second
            self._events = TokenBucket(rate, max(rate, float(max_events)), now)
        if limits.requests_per_second is not None:
            rate = limits.requests_per_second
            self._requests = TokenBucket(rate, max(rate, 1.0), now)
        self._on_throttled = on_throttled
        self._clock = clock
        self._turn = asyncio.Lock()
        self.waiting = 0  # requests waiting for tokens now
        self.throttled_seconds = 0.0

    @property
    def limited(self) -> bool:
        """Whether any bucket is configured."""
        return self._events is not None or self._requests is not None

    def _wait_time(self, events: int, now: float) -> float:
        wait = 0.0
        if self._events is not None:
            wait = self._events.wait_time(events, now)
        if self._requests is not None:
            wait = max(wait, self._requests.wait_time(1, now))
        return wait

    async def acquire(self, events: int, pause: Callable[[float], Awaitable[bool]]) -> bool:
        """Take the tokens of one request carrying ``events``; False if stopped first.

        ``pause(seconds)`` waits and returns True when the worker is stopping.
        """
        if not self.limited:
            return True
        self.waiting += 1
        try:
            async with self._turn:
                while True:
                    now = self._clock()
                    delay = self._wait_time(events, now)
                    # A wait of exactly the computed delay may leave the bucket a
                    # rounding error short: close enough is there.
                    if delay <= EPSILON_SECONDS:
                        if self._events is not None:
                            self._events.take(events, now)
                        if self._requests is not None:
                            self._requests.take(1, now)
                        return True
                    stopping = await pause(delay)
                    waited = max(0.0, self._clock() - now)
                    self.throttled_seconds += waited
                    self._on_throttled(waited)
                    if stopping:
                        return False
        finally:
            self.waiting -= 1
