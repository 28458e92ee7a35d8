"""Scenario 7: a far receiver that answers after 50 ms, at 1, 4 and 16 requests in flight.

A real SIEM is 20-200 ms away; one request at a time then caps a forwarder
at ``maxEvents / RTT`` (about 2,000 events/s with batches of 100 and 50 ms),
whatever the CPU. The sink here is the aiohttp sink in its own process with
a fixed 50 ms delay before it answers (nginx cannot delay an answer without
a module Debian does not ship); it reads each whole body first and logs the
same ``$msec $request_length $content_length $status`` lines as the others,
so events are counted the same way. One daemon per variant: ``ordering:
relaxed`` with ``maxInFlight`` 1, 4 and 16 (``concurrency: fixed``), and
``concurrency: adaptive`` bounded by 16; batches of 100 (``maxWaitMs``
50). events/s = events / (the sink's time for the last event - the time the
first byte was posted), as in scenario 1; the events are posted as fast as
ingest takes them, so the forwarder, not the generator, is the limit.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import BenchError, free_port, wait_for_port
from bench.sinks import Sink
from bench.steps import (
    DELIVERED,
    check_counts,
    forwarder_config,
    started,
    until_delivered,
    warm_up,
)
from bench.workload import NDJSON, NDJSON_CONNECTIONS, Run, ndjson_bodies

DELAY_SECONDS = 0.05
# (row key, title, daemon forwarder options)
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("7-1", "50 ms sink, 1 in flight", {"maxInFlight": 1}),
    ("7-4", "50 ms sink, 4 in flight", {"maxInFlight": 4}),
    ("7-16", "50 ms sink, 16 in flight", {"maxInFlight": 16}),
    ("7-adaptive", "50 ms sink, adaptive <= 16", {"maxInFlight": 16, "concurrency": "adaptive"}),
)

# argv: port, access log, delay in seconds.
DELAYED_SINK = r"""
import asyncio, sys, time
from aiohttp import web
log = open(sys.argv[2], "a", buffering=1)
delay = float(sys.argv[3])
async def sink(request):
    body = await request.read()
    await asyncio.sleep(delay)
    log.write(f"{time.time():.3f} {len(body)} {len(body)} 200\n")
    return web.Response(status=200)
app = web.Application(client_max_size=256 * 1024 * 1024)
app.router.add_route("*", "/{tail:.*}", sink)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass
class DelayedSink(Sink):
    """The aiohttp sink answering every request after ``DELAY_SECONDS``."""

    def start(self, port: int = 0) -> DelayedSink:
        """Start the delayed sink in its own process."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = port or self.port or free_port()
        argv = [sys.executable, "-c", DELAYED_SINK, str(self.port), str(self.log.path)]
        self.process = subprocess.Popen([*argv, str(DELAY_SECONDS)])
        self.kind = f"aiohttp, answers after {DELAY_SECONDS * 1000:.0f} ms"
        try:
            wait_for_port(self.port, 15, "the delayed sink", self.process)
        except BenchError:
            self.stop()
            raise
        return self


def events_for(run: Run) -> int:
    """Events per variant: a quarter of scenario 1's (at least 5,000)."""
    return max(5000, run.plan.events // 4 // 1000 * 1000)


async def far_receiver(run: Run, key: str, title: str, options: dict[str, Any]) -> dict[str, Any]:
    """One variant: post the events, wait until the delayed sink has them all."""
    events = events_for(run)
    bodies = ndjson_bodies(events)
    work = run.tmp / f"scenario-{key}"
    with contextlib.ExitStack() as stack:
        sink = DelayedSink(work / "sink")
        stack.callback(sink.stop)
        sink.start()
        run.sink_kind = run.sink_kind or sink.kind
        config = forwarder_config(work, sink.url)
        config["auditLogForwarders"][0].update(ordering="relaxed", **options)
        daemon = await started(stack, Daemon(work / "daemon", config))
        await warm_up(daemon, sink)
        sink.log.poll()
        base = sink.log.events
        delivered_before = await daemon.metric(DELIVERED, default=-1.0)
        load = await post_bodies(
            daemon.ingest_url,
            bodies,
            content_type=NDJSON,
            connections=NDJSON_CONNECTIONS,
            events_per_body=1000,
        )
        finished = await until_delivered(
            daemon, sink, base + events, max(120.0, events / 500), f"scenario {key}"
        )
        limit = await daemon.metric("audit_forwarder_delivery_concurrency_limit", default=-1.0)
        delivered = await check_counts(
            run, daemon, sink, sink.log.events - base, delivered_before, f"scenario {key}"
        )
    elapsed = max(finished - load.started_wall, 1e-3)
    return {
        "scenario": key,
        "title": title,
        "events": events,
        "events_per_second": round(events / elapsed),
        "seconds": round(elapsed, 3),
        "ingest_ack_events_per_second": round(events / load.elapsed),
        "options": {"ordering": "relaxed", **options},
        "concurrency_limit_at_end": limit,
        "daemon_delivered": delivered,
        "sink": sink.kind,
    }


Step = tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]


def far_receiver_steps(run: Run) -> list[Step]:
    """The variants as ``bench.run`` steps; none unless scenario 7 was chosen."""
    if 7 not in run.plan.scenarios:
        return []

    def step(key: str, title: str, options: dict[str, Any]) -> Step:
        return (key, title, lambda: far_receiver(run, key, title, options))

    return [step(key, title, options) for key, title, options in VARIANTS]
