"""The steps every scenario shares: configure, start, warm up, wait and cross-check.

Every scenario configures the daemon the same way (``forwarder_config``: one
webhook forwarder, ``batch: {maxEvents: 100, maxWaitMs: 50}``, ``format:
json``, retries backing off 0.2 to 0.5 s) and registers a process's stop
before starting it, so a start that fails half way is cleaned up too. The
warm-up delivers 1,000 events untimed and learns from them the delivered
bytes per event, by which the sink counts events from then on; every timed
count is cross-checked against the daemon's
``audit_forwarder_events_delivered_total``, and a wait that fails says what
the daemon's ``/metrics`` showed. Percentiles are nearest-rank over every
measured value; ``histogram_quantile`` reads the daemon's own histogram,
interpolating within its coarse buckets, as a cross-check only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.daemon import Daemon, daemon_config
from bench.load import post_bodies
from bench.processes import BenchError
from bench.sinks import RecordingSink, Sink, wait_for_events
from bench.workload import EVENT_BYTES, NDJSON, WARMUP_EVENTS, Run, ndjson_bodies

BATCH = {"maxEvents": 100, "maxWaitMs": 50}


DELIVERED = "audit_forwarder_events_delivered_total"
RECEIVED = "audit_forwarder_events_received_total"
BUFFERED = "audit_forwarder_buffer_events"
PENDING = "audit_forwarder_pending_events"
INGEST_TO_DELIVERY = "audit_forwarder_ingest_to_delivery_seconds"


def forwarder_config(work: Path, sink_url: str, synchronous: str = "normal") -> dict[str, Any]:
    """The daemon's configuration for a scenario."""
    config = daemon_config(
        work,
        sink_url,
        name="bench",
        format="json",
        batch=dict(BATCH),
        retry={"initialBackoffSeconds": 0.2, "maxBackoffSeconds": 0.5},
    )
    config["buffer"]["synchronous"] = synchronous
    return config


async def started(stack: contextlib.ExitStack, daemon: Daemon) -> Daemon:
    """Start the daemon, registering its stop first so a failed start is cleaned up too."""
    stack.callback(daemon.stop)
    return await daemon.start()


def started_sink(stack: contextlib.ExitStack, sink: Sink, run: Run, port: int = 0) -> Sink:
    """Start a sink, registering its stop."""
    stack.callback(sink.stop)
    sink.start(port)
    if not isinstance(sink, RecordingSink):
        run.sink_kind = sink.kind
    return sink


async def daemon_state(daemon: Daemon) -> str:
    """A line on what the daemon reports, for failure messages."""
    if daemon.process is not None and daemon.process.poll() is not None:
        return f"the daemon exited with status {daemon.process.returncode}:\n{daemon.log_tail()}"
    try:
        samples = await daemon.samples()
    except Exception as exc:  # any failure to read is itself the diagnosis
        return f"the daemon's /metrics did not answer ({exc!r})"
    wanted = (RECEIVED, DELIVERED, PENDING, BUFFERED, "audit_forwarder_delivery_attempts_total")
    shown = [
        f"{name}{labels or ''}={value:g}"
        for name, labels, value in samples
        if name in wanted and value
    ]
    return "daemon: " + (", ".join(shown) or "no counts on /metrics")


async def until_delivered(
    daemon: Daemon, sink: Sink, events: int, seconds: float, what: str
) -> float:
    """Wait until the sink has ``events``; the ``$msec`` of the completing request."""
    try:
        return await wait_for_events(sink, events, seconds, what, [daemon.process, sink.process])
    except BenchError as exc:
        raise BenchError(f"{exc}\n{await daemon_state(daemon)}") from None


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    seconds: float,
    failure: str | Callable[[], str],
    interval: float = 0.2,
) -> float:
    """Poll ``condition`` until true; seconds waited. Raises BenchError with ``failure``."""
    started_at = time.monotonic()
    while not await condition():
        if time.monotonic() - started_at > seconds:
            message = failure if isinstance(failure, str) else failure()
            raise BenchError(f"{message} (waited {seconds:.0f} s)")
        await asyncio.sleep(interval)
    return time.monotonic() - started_at


async def warm_up(daemon: Daemon, sink: Sink) -> None:
    """Deliver 1,000 events untimed and learn the delivered bytes per event from them.

    Done when the daemon counts them delivered (when it exposes the counter),
    the sink has at least their bytes and its log has been quiet for 0.5 s.
    """
    sink.log.poll()
    bytes_before = sink.log.body_bytes
    delivered_before = await daemon.metric(DELIVERED, default=-1.0)
    await post_bodies(
        daemon.ingest_url,
        ndjson_bodies(WARMUP_EVENTS, start=900_000_000),
        content_type=NDJSON,
        connections=1,
        events_per_body=WARMUP_EVENTS,
    )
    quiet = {"bytes": -1, "since": time.monotonic()}

    async def delivered() -> bool:
        daemon.check_alive()
        sink.log.poll()
        got = sink.log.body_bytes - bytes_before
        if got != quiet["bytes"]:
            quiet.update(bytes=got, since=time.monotonic())
        if got < WARMUP_EVENTS * EVENT_BYTES or time.monotonic() - quiet["since"] < 0.5:
            return False
        if delivered_before < 0:
            return True
        return await daemon.metric(DELIVERED) - delivered_before >= WARMUP_EVENTS

    try:
        await wait_until(delivered, 60, "warm-up: 1,000 events were not delivered")
    except BenchError as exc:
        raise BenchError(f"{exc}\n{await daemon_state(daemon)}") from None
    per_event = (sink.log.body_bytes - bytes_before) / WARMUP_EVENTS
    if not EVENT_BYTES <= per_event < 1.5 * EVENT_BYTES:
        raise BenchError(
            f"warm-up: the sink received {per_event:.1f} bytes per {EVENT_BYTES}-byte event;"
            " events cannot be counted from body bytes"
        )
    counted_before = sink.log.events
    sink.log.set_per_event(per_event)
    if sink.log.events - counted_before < WARMUP_EVENTS and counted_before == 0:
        raise BenchError(
            f"warm-up: counting from body bytes found {sink.log.events:,} of"
            f" {WARMUP_EVENTS:,} events; the body framing is not constant per event"
        )


async def check_counts(
    run: Run, daemon: Daemon, sink: Sink, expected: int, delivered_before: float, what: str
) -> int:
    """Cross-check the sink's count with the daemon's delivered counter; the daemon's count."""
    await asyncio.sleep(0.3)
    sink.log.poll()
    if sink.log.refused:
        run.warn(f"{what}: the sink answered {sink.log.refused} requests with an error")
    if delivered_before < 0:
        return -1
    delivered = round(await daemon.metric(DELIVERED) - delivered_before)
    if delivered != expected:
        run.warn(
            f"{what}: the daemon counts {delivered:,} events delivered, the sink {expected:,}"
            " (duplicates, or events counted wrongly from body bytes)"
        )
    return delivered


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def histogram_quantile(buckets: dict[float, float], fraction: float) -> float | None:
    """A quantile from cumulative buckets, interpolated linearly within the bucket."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = fraction * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: report that bound
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower
