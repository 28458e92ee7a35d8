"""Scenario 4: a backlog built while the sink is down, then drained.

The forwarder points at a free port where nothing listens (retry backoff 0.2
to 0.5 s) after a warm-up through a sink on that port; the backlog is ingested
in ten slices, recording the tree's RSS after each; then the sink starts on
that port. Drain rate = backlog / (time of the last event's arrival - time of
the first request's arrival after the restart); RSS growth = peak during
ingest and drain - RSS at 10 % of the backlog; buffer file = database + WAL:
when empty (after the warm-up), with the backlog, and after the drain (once
``audit_forwarder_buffer_events`` is 0, polling up to 30 s while the daemon's
incremental vacuum frees pages).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import BenchError, CpuWindow, TreeSampler, free_port
from bench.sinks import Sink
from bench.steps import (
    BUFFERED,
    forwarder_config,
    started,
    started_sink,
    until_delivered,
    wait_until,
    warm_up,
)
from bench.workload import MB, NDJSON, NDJSON_CONNECTIONS, WARMUP_EVENTS, Run, ndjson_bodies


async def backlog(run: Run) -> dict[str, Any]:
    """Scenario 4: a backlog built while the sink is down, then drained."""
    events = run.plan.backlog
    slices = 10
    per_slice = math.ceil(events / slices / 1000) * 1000
    bodies = ndjson_bodies(events)
    work = run.tmp / "scenario-4"
    port = free_port()
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, Sink(work / "sink"), run, port)
        daemon = await started(stack, Daemon(work / "daemon", forwarder_config(work, sink.url)))
        await warm_up(daemon, sink)
        sink.stop()
        await asyncio.sleep(0.5)
        empty = daemon.buffer_files()
        with TreeSampler(daemon.pid) as rss:
            rss_by_backlog: list[tuple[int, float]] = []
            cpu = CpuWindow(daemon.pid).start()
            since = time.monotonic()
            sent = 0
            for first in range(0, len(bodies), per_slice // 1000):
                chunk = bodies[first : first + per_slice // 1000]
                await post_bodies(
                    daemon.ingest_url,
                    chunk,
                    content_type=NDJSON,
                    connections=NDJSON_CONNECTIONS,
                    events_per_body=1000,
                )
                sent += sum(body.count(b"\n") + 1 for body in chunk)
                rss_by_backlog.append((sent, round(rss.now() / MB, 1)))
            ingest_seconds = time.monotonic() - since
            ingest_cpu = cpu.stop()
            sink.log.poll()
            if sink.log.events != WARMUP_EVENTS:
                raise BenchError("scenario 4: the sink received events while it was down")
            full = daemon.buffer_files()
            drain_since = time.monotonic()
            drain_cpu = CpuWindow(daemon.pid).start()
            requests_before = sink.log.requests
            sink.start(port)
            sink_started = time.time()
            finished = await until_delivered(
                daemon,
                sink,
                WARMUP_EVENTS + events,
                max(180.0, events / 2000),
                "scenario 4: draining",
            )
            drain_cpu.stop()
            drain_peak = rss.peak(since=drain_since)
            ingest_peak = rss.peak(since=since, until=drain_since)
            first_arrival = sink.log.arrivals[requests_before][0]
        after = await drained_buffer(daemon, empty)
    drain_seconds = max(finished - first_arrival, 1e-3)
    at_tenth = rss_by_backlog[0][1]
    return {
        "scenario": "4",
        "title": f"backlog of {events:,}, then drain",
        "events": events,
        "ingest_events_per_second": round(events / ingest_seconds),
        "ingest_cpu_seconds_per_100k": round(ingest_cpu / events * 100_000, 3),
        "drain_events_per_second": round(events / drain_seconds),
        "drain_seconds": round(drain_seconds, 2),
        "first_arrival_after_sink_start_s": round(first_arrival - sink_started, 2),
        "cpu_seconds_per_100k": round(drain_cpu.seconds / events * 100_000, 3),
        "rss_mb_by_backlog": rss_by_backlog,
        "rss_at_10pct_mb": at_tenth,
        "peak_rss_ingest_mb": round(ingest_peak / MB, 1),
        "peak_rss_drain_mb": round(drain_peak / MB, 1),
        "peak_rss_mb": round(max(ingest_peak, drain_peak) / MB, 1),
        "peak_pss_mb": round(rss.peak_pss(since=since) / MB, 1),
        "rss_growth_mb": round(max(ingest_peak, drain_peak) / MB - at_tenth, 1),
        "buffer_empty_mb": round(sum(empty.values()) / MB, 2),
        "buffer_full_mb": round(sum(full.values()) / MB, 1),
        **after,
        "generator": f"aiohttp pool, {NDJSON_CONNECTIONS} keep-alive connections, NDJSON 1000s",
        "sink": sink.kind,
    }


async def drained_buffer(daemon: Daemon, empty: dict[str, int]) -> dict[str, Any]:
    """Wait for the buffer to hold 0 events, then up to 30 s for its file to shrink."""

    async def no_events() -> bool:
        daemon.check_alive()
        return await daemon.metric(BUFFERED) == 0

    await wait_until(no_events, 60, f"scenario 4: {BUFFERED} did not reach 0 after the drain")
    near = sum(empty.values()) + 16 * MB
    waited = 0.0
    started_at = time.monotonic()
    while sum(daemon.buffer_files().values()) > near and waited < 30:
        await asyncio.sleep(1)
        waited = time.monotonic() - started_at
    sizes = daemon.buffer_files()
    return {
        "buffer_after_drain_mb": round(sum(sizes.values()) / MB, 2),
        "buffer_after_drain_db_mb": round(sizes["db"] / MB, 2),
        "buffer_after_drain_wal_mb": round(sizes["wal"] / MB, 2),
        "buffer_shrink_wait_s": round(waited, 1),
    }
