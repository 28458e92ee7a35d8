"""Scenarios 1, 5 and 6: end-to-end throughput, and syslog-ng with the same workload.

1. End to end: N events as NDJSON bodies of 1,000, pre-built, sent by an
   aiohttp client pool of 4 keep-alive connections (``1-single``: one
   connection, each body waiting for its 202, as a simple application sends).
   events/s = N / (time the sink's access log shows the N-th event - time the
   first byte was sent);
   CPU-s per 100k events over that window; peak RSS over it.
5. Scale: scenario 1 on a daemon and buffer file that first delivered 2,000,000
   older events (NDJSON 1,000-batches, waited for until the sink has them all).
6. Scenario 1 with ``buffer.synchronous: full``.
8. Scenario 1 with the buffer encrypted at rest (``buffer.encryption`` with
   one random key file): the cost of AES-256-GCM on every batch written and read.

The three are one function (``end_to_end``) because they differ only in the
daemon's history and its ``synchronous`` mode. ``run_syslog_ng`` is here
because syslog-ng takes scenario 1's workload (see ``bench.syslog_ng``), so
that the ratios to it compare like with like.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

from bench import syslog_ng
from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import BenchError, CpuWindow, TreeSampler
from bench.sinks import Sink
from bench.steps import (
    DELIVERED,
    check_counts,
    forwarder_config,
    started,
    started_sink,
    until_delivered,
    warm_up,
)
from bench.workload import (
    EVENT_BYTES,
    MB,
    NDJSON,
    NDJSON_CONNECTIONS,
    WARMUP_EVENTS,
    Run,
    lines,
    ndjson_bodies,
)


async def run_syslog_ng(run: Run) -> dict[str, Any]:
    """syslog-ng with scenario 1's workload (see bench.syslog_ng)."""
    reason = syslog_ng.unavailable_reason()
    if reason:
        raise BenchError(reason)
    events = run.plan.events
    return await syslog_ng.run(
        run.tmp / "syslog-ng",
        lines(WARMUP_EVENTS, start=900_000_000),
        lines(events),
        events,
        EVENT_BYTES,
    )


async def end_to_end(
    run: Run,
    key: str,
    title: str,
    synchronous: str = "normal",
    history: int = 0,
    encrypted: bool = False,
    connections: int = NDJSON_CONNECTIONS,
) -> dict[str, Any]:
    """Scenario 1 (and 5, 6, 8): N events in NDJSON 1,000-batches, until the sink has them all.

    ``connections``: the client pool's size; 1 is an application that sends
    one body and waits for its 202 before the next.
    """
    events = run.plan.events
    bodies = run.bodies()
    work = run.tmp / f"scenario-{key}"
    row: dict[str, Any] = {"scenario": key, "title": title, "synchronous": synchronous}
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, Sink(work / "sink"), run)
        config = forwarder_config(work, sink.url, synchronous)
        if encrypted:
            work.mkdir(parents=True, exist_ok=True)
            (work / "buffer.key").write_bytes(os.urandom(32))
            config["buffer"]["encryption"] = {"keyFile": str(work / "buffer.key")}
            row["encryption"] = "aes-256-gcm"
        daemon = await started(stack, Daemon(work / "daemon", config))
        with TreeSampler(daemon.pid) as rss:
            await warm_up(daemon, sink)
            if history:
                # Full 1,000-event bodies reused: older events need not be unique.
                pattern = ndjson_bodies(min(history, 200_000), start=100_000_000)
                history_bodies = [
                    pattern[i % len(pattern)] for i in range(math.ceil(history / 1000))
                ]
                history_events = sum(body.count(b"\n") + 1 for body in history_bodies)
                print(f"  delivering {history_events:,} older events first", flush=True)
                prep_started = time.monotonic()
                await post_bodies(
                    daemon.ingest_url,
                    history_bodies,
                    content_type=NDJSON,
                    connections=NDJSON_CONNECTIONS,
                    events_per_body=1000,
                )
                await until_delivered(
                    daemon,
                    sink,
                    sink.log.events + history_events,
                    max(300.0, history_events / 2000),
                    f"scenario {key}: delivering the older events",
                )
                row["history_events"] = history_events
                row["history_seconds"] = round(time.monotonic() - prep_started, 1)
            sink.log.poll()
            base = sink.log.events
            delivered_before = await daemon.metric(DELIVERED, default=-1.0)
            cpu = CpuWindow(daemon.pid).start()
            since = time.monotonic()
            load = await post_bodies(
                daemon.ingest_url,
                bodies,
                content_type=NDJSON,
                connections=connections,
                events_per_body=1000,
            )
            finished = await until_delivered(
                daemon, sink, base + events, max(120.0, events / 2000), f"scenario {key}"
            )
            cpu.stop()
            peak = rss.peak(since=since)
            peak_pss = rss.peak_pss(since=since)
        delivered = await check_counts(
            run, daemon, sink, sink.log.events - base, delivered_before, f"scenario {key}"
        )
        buffer_files = daemon.buffer_files()
    elapsed = max(finished - load.started_wall, 1e-3)
    row.update(
        events=events,
        events_per_second=round(events / elapsed),
        seconds=round(elapsed, 3),
        ingest_ack_events_per_second=round(events / load.elapsed),
        cpu_seconds_per_100k=round(cpu.seconds / events * 100_000, 3),
        peak_rss_mb=round(peak / MB, 1),
        peak_pss_mb=round(peak_pss / MB, 1),
        daemon_delivered=delivered,
        buffer_file_mb=round(sum(buffer_files.values()) / MB, 1),
        generator=f"aiohttp pool, {connections} keep-alive connection(s), NDJSON 1000s",
        sink=sink.kind,
    )
    return row
