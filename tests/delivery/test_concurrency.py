"""The adaptive concurrency limit (AIMD), driven with an injected clock.

The controller is arithmetic over what the worker reports (RTTs, back
pressure, saturation) and the time, so the clock is the one thing injected;
the last test drives it through a real worker and receiver.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from forwarder.buffer.store import EventBuffer
from forwarder.delivery.concurrency import ConcurrencyLimit
from forwarder.destinations.options import DeliveryOptions
from tests.delivery.workers import LIMIT, Overlap, StartWorker, append_events, sample, webhook
from tests.support import Reply, ScriptedReceiver, wait_for


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def adaptive(maximum: int, clock: Clock) -> ConcurrencyLimit:
    """An adaptive limit bounded by ``maximum``."""
    options = DeliveryOptions(ordering="relaxed", concurrency="adaptive", max_in_flight=maximum)
    return ConcurrencyLimit(options, clock)


def window(limit: ConcurrencyLimit, clock: Clock, rtt: float, *, saturated: bool = True) -> None:
    """One RTT window: the limit was reached (or not) and requests took ``rtt``."""
    if saturated:
        limit.saturated()
    clock.now += rtt
    limit.observe(rtt, back_pressure=False)


def test_fixed_concurrency_is_max_in_flight_whatever_happens() -> None:
    """``fixed`` is maxInFlight, and back pressure or slow answers do not move it."""
    clock = Clock()
    limit = ConcurrencyLimit(DeliveryOptions(ordering="relaxed", max_in_flight=16), clock)
    for _ in range(5):
        clock.now += 1
        limit.observe(None, back_pressure=True)
    assert limit.limit == 16


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (DeliveryOptions(), 1),
        (DeliveryOptions(ordering="relaxed"), 4),
        (DeliveryOptions(ordering="relaxed", max_in_flight=32), 32),
    ],
)
def test_the_limit_follows_ordering_and_max_in_flight(
    options: DeliveryOptions, expected: int
) -> None:
    """strict is one at a time; relaxed defaults to 4 in flight; maxInFlight sets it."""
    assert ConcurrencyLimit(options).limit == expected


def test_adaptive_starts_at_one_and_adds_one_per_saturated_window_up_to_the_maximum() -> None:
    """Steady RTTs with more work than allowed: +1 per window, never above maxInFlight."""
    clock = Clock()
    limit = adaptive(4, clock)
    assert limit.limit == 1
    seen = []
    for _ in range(8):
        window(limit, clock, 0.05)
        seen.append(limit.limit)
    assert seen == [1, 2, 3, 4, 4, 4, 4, 4]


def test_adaptive_does_not_grow_without_evidence_that_more_would_be_used() -> None:
    """Windows in which the limit was never reached leave it where it is."""
    clock = Clock()
    limit = adaptive(8, clock)
    for _ in range(6):
        window(limit, clock, 0.05, saturated=False)
    assert limit.limit == 1


def test_back_pressure_multiplies_the_limit_by_nine_tenths_once_per_window() -> None:
    """429/503/timeouts in a window: limit x0.9 rounded down, at least 1."""
    clock = Clock()
    limit = adaptive(20, clock)
    for _ in range(15):
        window(limit, clock, 0.05)
    assert limit.limit == 15
    clock.now += 0.01
    limit.observe(None, back_pressure=True)  # mid-window: decided at the window's end
    assert limit.limit == 15
    clock.now += 0.05
    limit.observe(None, back_pressure=True)
    assert limit.limit == 13
    for _ in range(30):
        clock.now += 0.05
        limit.observe(None, back_pressure=True)
    assert limit.limit == 1


def test_a_rising_rtt_decreases_the_limit() -> None:
    """An RTT well above the moving average (a receiver queueing us) cuts the limit."""
    clock = Clock()
    limit = adaptive(10, clock)
    for _ in range(7):
        window(limit, clock, 0.05)
    assert limit.limit == 7
    window(limit, clock, 0.2)
    assert limit.limit == 6


def test_back_pressure_before_any_rtt_is_known_still_decreases() -> None:
    """A receiver refusing from the first request does not wait for an RTT sample."""
    clock = Clock()
    limit = adaptive(8, clock)
    limit.limit = 5  # as if it had grown before the receiver started refusing
    limit.observe(None, back_pressure=True)
    assert limit.limit == 4


async def test_adaptive_climbs_against_a_steady_receiver_and_falls_back_on_503(
    buffer: EventBuffer,
    receiver: ScriptedReceiver,
    start_worker: StartWorker,
    registry: CollectorRegistry,
) -> None:
    """A real receiver answering in 20 ms lifts the limit from 1; 503s bring it back to 1."""
    failing = asyncio.Event()

    async def decide(_: web.Request) -> Reply:
        return Reply(503) if failing.is_set() else Reply(200)

    overlap = Overlap(decide, delay=0.02)
    receiver.decide = overlap
    await append_events(buffer, range(5000))
    spec = webhook(
        receiver,
        ordering="relaxed",
        concurrency="adaptive",
        max_in_flight=6,
        batch={"maxEvents": 5},
    )

    await start_worker(spec)
    assert sample(registry, LIMIT, forwarder="f") == 1
    await wait_for(lambda: sample(registry, LIMIT, forwarder="f") >= 3, message="limit >= 3")
    assert overlap.peak >= 2
    failing.set()
    await wait_for(lambda: sample(registry, LIMIT, forwarder="f") == 1, message="limit back to 1")
    assert overlap.peak <= 6
