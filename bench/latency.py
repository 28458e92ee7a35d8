"""Scenario 3: acknowledgement-to-arrival latency of every event at a steady offered rate.

Single-event requests offered open-loop at a steady 2,000 events/s for 30 s
(plus one untimed warm-up second) over TCP. Each event carries its sequence
number; the generator records the CLOCK_MONOTONIC time at which it read each
202, and the sink (here always the aiohttp recording sink, which parses every
body) records the CLOCK_MONOTONIC time at which each event's request body had
fully arrived. CLOCK_MONOTONIC is one system-wide clock on Linux, so arrival -
acknowledgement is the acknowledgement-to-arrival latency of every single
event; p50 / p99 / max are over all of them. The client reads a 202 a little
after the daemon sent it (its event loop shares two cores with the daemon), so
this can only understate, and can even be negative for an event delivered
before its 202 was read; the row therefore also gives arrival - send (taken
before the request: an upper bound that includes ingest) and the generator's
own event-loop lag (a 5 ms timer's lateness), between which the daemon's true
figure lies. The daemon's own ``audit_forwarder_ingest_to_delivery_seconds``
histogram is read before and after and its p50 / p99 interpolated within
buckets, as a cross-check only: it runs from the daemon's receipt to the 2xx
answer and its buckets are coarse (0.05, 0.1, 0.25, 0.5 s ...). The generators
pause the benchmark's own garbage collector while timed: a full collection
stalled its event loop for up to half a second, which showed up as latency.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench.daemon import Daemon
from bench.load import offer_steady
from bench.processes import BenchError, CpuWindow, TreeSampler
from bench.sinks import RecordingSink
from bench.steps import (
    INGEST_TO_DELIVERY,
    daemon_state,
    forwarder_config,
    histogram_quantile,
    percentile,
    started,
    started_sink,
    wait_until,
)
from bench.workload import LATENCY_CONNECTIONS, MB, Run, event


async def latency(run: Run) -> dict[str, Any]:
    """Scenario 3: steady 2,000 events/s; acknowledgement-to-arrival latency per event."""
    rate = run.plan.latency_rate
    warm = rate  # one second, not counted
    total = warm + round(rate * run.plan.latency_seconds)
    bodies = [event(seq) for seq in range(total)]
    work = run.tmp / "scenario-3"
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, RecordingSink(work / "sink"), run)
        assert isinstance(sink, RecordingSink)
        daemon = await started(stack, Daemon(work / "daemon", forwarder_config(work, sink.url)))
        with TreeSampler(daemon.pid) as rss:
            histogram_before = await daemon.histogram(INGEST_TO_DELIVERY)
            cpu = CpuWindow(daemon.pid).start()
            since = time.monotonic()
            offer = await offer_steady(daemon.ingest_url, bodies, rate, LATENCY_CONNECTIONS)
            cpu.stop()
            offered_for = time.monotonic() - since
            arrivals: dict[int, int] = {}

            async def all_arrived() -> bool:
                daemon.check_alive()
                arrivals.update(sink.read_arrivals())
                return len(arrivals) >= total

            try:
                await wait_until(
                    all_arrived,
                    60,
                    lambda: f"scenario 3: the sink has {len(arrivals):,} of {total:,} events",
                )
            except BenchError as exc:
                raise BenchError(f"{exc}\n{await daemon_state(daemon)}") from None
            peak = rss.peak(since=since)
            peak_pss = rss.peak_pss(since=since)
            histogram_after = await daemon.histogram(INGEST_TO_DELIVERY)
    measured = range(warm, total)
    delays = [(arrivals[seq] - offer.acked_ns[seq]) / 1e6 for seq in measured]
    acks = [(offer.acked_ns[seq] - offer.sent_ns[seq]) / 1e6 for seq in measured]
    from_send = [(arrivals[seq] - offer.sent_ns[seq]) / 1e6 for seq in measured]
    sending = (offer.sent_ns[total - 1] - offer.sent_ns[warm]) / 1e9
    delta = {le: count - histogram_before.get(le, 0.0) for le, count in histogram_after.items()}
    from_histogram = {
        f"histogram_p{int(q * 100)}_ms": (None if v is None else round(v * 1000, 1))
        for q in (0.5, 0.99)
        for v in [histogram_quantile(delta, q)]
    }
    achieved = (len(measured) - 1) / sending if sending > 0 else 0.0
    if achieved < 0.95 * rate:
        run.warn(f"scenario 3: the generator offered only {achieved:,.0f} events/s of {rate:,}")
    return {
        "scenario": "3",
        "title": f"latency at {rate:,} events/s offered",
        "events": len(measured),
        "offered_events_per_second": round(achieved),
        "seconds": round(offered_for, 1),
        "p50_ms": round(percentile(delays, 0.50), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
        "min_ms": round(min(delays), 1),
        "ack_p50_ms": round(percentile(acks, 0.50), 2),
        "ack_p99_ms": round(percentile(acks, 0.99), 2),
        "send_to_arrival_p50_ms": round(percentile(from_send, 0.50), 1),
        "send_to_arrival_p99_ms": round(percentile(from_send, 0.99), 1),
        "send_to_arrival_max_ms": round(max(from_send), 1),
        "generator_lag_p99_ms": round(percentile(offer.lag_ms, 0.99), 1),
        "generator_lag_max_ms": round(max(offer.lag_ms, default=0.0), 1),
        **from_histogram,
        "cpu_share": round(cpu.seconds / offered_for, 2),
        "cpu_seconds_per_100k": round(cpu.seconds / total * 100_000, 3),
        "peak_rss_mb": round(peak / MB, 1),
        "peak_pss_mb": round(peak_pss / MB, 1),
        "generator": f"aiohttp, open loop, single-event requests, up to {LATENCY_CONNECTIONS}"
        " connections",
        "sink": sink.kind,
        "method": "per event: sink arrival (CLOCK_MONOTONIC, body read) minus the client's"
        " reading of its 202; send_to_arrival (from before the request) is an upper bound",
    }
