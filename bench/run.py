"""The benchmark: the real daemon end to end, next to syslog-ng, in one command.

Usage: ``python -m bench.run [--quick] [--only 1,2] [--events N]`` (``make bench``
installs the Debian tools first). Prints one table row per scenario, the
targets with PASS / FAIL, a Markdown table for the README, and writes
everything with the machine's description to ``bench/results/`` (git-ignored).
Targets are reported, never asserted; the exit status is 1 only when a
scenario could not be measured.

Each scenario starts the real ``audit-forwarder`` process with a configuration
written for it (buffer, socket and logs in a temporary directory; one webhook
forwarder with ``batch: {maxEvents: 100, maxWaitMs: 50}`` and ``format:
json``) and drives it only through that file, its ingest API, ``/metrics`` and
its log lines. Deliveries go to a loopback nginx sink that reads each body,
answers 200 and logs ``$msec`` and ``$content_length`` (see ``bench.harness``);
without nginx, an aiohttp sink in its own process, and the output says so.
Events are ~500-byte JSON objects of the same length, so the sink counts them
from body bytes: a warm-up of 1,000 events (untimed) learns the delivered bytes
per event, and every timed count is cross-checked against the daemon's
``audit_forwarder_events_delivered_total``. CPU is that of the daemon's whole
process tree from /proc (utime + stime, plus reaped children's); memory is the
summed RSS of the tree sampled every ~100 ms (a page shared by two processes
counts twice), with the tree's PSS (shared pages divided among their users)
sampled every ~1 s beside it in the results.

1. End to end: N events as NDJSON bodies of 1,000, pre-built, sent by an
   aiohttp client pool of 4 keep-alive connections. events/s = N / (time the
   sink's access log shows the N-th event - time the first byte was sent);
   CPU-s per 100k events over that window; peak RSS over it.
2. Single-event ingest, one event per request, 32 concurrent keep-alive
   clients. TCP: wrk (one thread, Lua script) stopped once the requested
   number of answers has arrived (a few more in flight may be counted; see
   ``wrk_fixed_requests``), its figures: 2xx answers / wrk's elapsed time,
   p50 / p99 from ``--latency``. Unix socket (wrk cannot connect to one):
   ``bench/unix_load.py`` in its own process, 32 raw asyncio keep-alive
   connections writing pre-built requests and timing each from send to the
   202 (an aiohttp pool used two thirds of a core at 9,000 requests/s and was
   the limit; this one uses about a sixth at 15,000). Both rows say which
   generator produced them and how much CPU it used, since a generator
   saturating a core caps the figure it reports.
3. Latency: single-event requests offered open-loop at a steady 2,000 events/s
   for 30 s (plus one untimed warm-up second) over TCP. Each event carries its
   sequence number; the generator records the CLOCK_MONOTONIC time at which it
   read each 202, and the sink (here always the aiohttp recording sink, which
   parses every body) records the CLOCK_MONOTONIC time at which each event's
   request body had fully arrived. CLOCK_MONOTONIC is one system-wide clock on
   Linux, so arrival - acknowledgement is the acknowledgement-to-arrival
   latency of every single event; p50 / p99 / max are over all of them. The
   client reads a 202 a little after the daemon sent it (its event loop
   shares two cores with the daemon), so this can only understate, and can
   even be negative for an event delivered before its 202 was read; the row
   therefore also gives arrival - send (taken before the request: an upper
   bound that includes ingest) and the generator's own event-loop lag (a 5 ms
   timer's lateness), between which the daemon's true figure lies. The
   daemon's own ``audit_forwarder_ingest_to_delivery_seconds`` histogram is
   read before and after and its p50 / p99 interpolated within buckets, as a
   cross-check only: it runs from the daemon's receipt to the 2xx answer and
   its buckets are coarse (0.05, 0.1, 0.25, 0.5 s ...). The generators pause
   the benchmark's own garbage collector while timed: a full collection
   stalled its event loop for up to half a second, which showed up as latency.
4. Backlog: the forwarder points at a free port where nothing listens (retry
   backoff 0.2 to 0.5 s) after a warm-up through a sink on that port; the
   backlog is ingested in ten slices, recording the tree's RSS after each;
   then the sink starts on that port. Drain rate = backlog / (time of the last
   event's arrival - time of the first request's arrival after the restart);
   RSS growth = peak during ingest and drain - RSS at 10 % of the backlog;
   buffer file = database + WAL: when empty (after the warm-up), with the
   backlog, and after the drain (once ``audit_forwarder_buffer_events`` is 0,
   polling up to 30 s while the daemon's incremental vacuum frees pages).
5. Scale: scenario 1 on a daemon and buffer file that first delivered 2,000,000
   older events (NDJSON 1,000-batches, waited for until the sink has them all).
6. Scenario 1 with ``buffer.synchronous: full``.

syslog-ng (``bench.syslog_ng``) takes scenario 1's workload over TCP in the
same run, counted at the same kind of sink, and scenarios 1, 4, 5 and 6 are
also shown as ratios to it; when it is missing or fails, the output says why
and shows our figures without ratios.

Kept to three modules (this one: scenarios and report; ``bench.harness``:
processes, accounting, sinks and load generators; ``bench.syslog_ng``: the
peer) so the benchmark stays one ``python -m`` away; that makes this module
and the harness longer than the house limit of ~400 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import syslog_ng
from bench.harness import (
    CLI,
    BenchError,
    CpuWindow,
    Daemon,
    RecordingSink,
    Sink,
    TreeSampler,
    daemon_config,
    free_port,
    offer_steady,
    post_bodies,
    wait_for_events,
    wrk_fixed_requests,
    wrk_version,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NDJSON = "application/x-ndjson"
BATCH = {"maxEvents": 100, "maxWaitMs": 50}
WARMUP_EVENTS = 1000
NDJSON_CONNECTIONS = 4
SINGLE_CONNECTIONS = 32
LATENCY_CONNECTIONS = 64
MB = 2**20

DELIVERED = "audit_forwarder_events_delivered_total"
RECEIVED = "audit_forwarder_events_received_total"
BUFFERED = "audit_forwarder_buffer_events"
PENDING = "audit_forwarder_pending_events"
INGEST_TO_DELIVERY = "audit_forwarder_ingest_to_delivery_seconds"

EVENT_HEAD = (
    '{"event_type":"approval.decided","timestamp":"2026-03-23T14:02:30.000Z",'
    '"data":{"request_id":"req_%09d","decision":"approved",'
    '"requester":{"email":"alice@example.com","name":"Alice Example"},'
    '"integration":"postgres-prod","reason":"on-call investigation","pad":"'
)
EVENT_TAIL = '"}}'
EVENT_BYTES = 500
EVENT_TEMPLATE = (
    EVENT_HEAD + "x" * (EVENT_BYTES - len(EVENT_HEAD % 0) - len(EVENT_TAIL)) + EVENT_TAIL
)


def event(seq: int) -> bytes:
    """One 500-byte audit event; ``seq`` (below 10**9) is its ``data.request_id``."""
    return (EVENT_TEMPLATE % seq).encode()


def ndjson_bodies(count: int, start: int = 0, per_body: int = 1000) -> list[bytes]:
    """``count`` events from ``start`` as NDJSON bodies of ``per_body`` events."""
    return [
        "\n".join(
            EVENT_TEMPLATE % seq for seq in range(first, min(first + per_body, start + count))
        ).encode()
        for first in range(start, start + count, per_body)
    ]


def lines(count: int, start: int = 0) -> bytes:
    """``count`` events as newline-terminated lines (syslog-ng's input)."""
    return "".join(EVENT_TEMPLATE % seq + "\n" for seq in range(start, start + count)).encode()


@dataclass(frozen=True)
class Plan:
    """How much each scenario does."""

    events: int = 200_000  # scenarios 1, 5, 6 and syslog-ng
    single_requests: int = 200_000  # scenario 2, per transport
    latency_seconds: float = 30.0
    latency_rate: int = 2000
    backlog: int = 1_000_000
    history: int = 2_000_000
    scenarios: frozenset[int] = frozenset(range(1, 7))
    quick: bool = False
    keep_temp: bool = False


QUICK = Plan(
    events=20_000,
    single_requests=20_000,
    latency_seconds=10.0,
    backlog=100_000,
    history=200_000,
    quick=True,
)


@dataclass
class Run:
    """One benchmark run: its plan, temporary directory and what it found."""

    plan: Plan
    tmp: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sink_kind: str = ""
    _bodies: list[bytes] = field(default_factory=list)

    def bodies(self) -> list[bytes]:
        """Scenario 1's NDJSON bodies, built once."""
        if not self._bodies:
            self._bodies = ndjson_bodies(self.plan.events)
        return self._bodies

    def warn(self, message: str) -> None:
        """Keep a warning for the report and print it now."""
        self.warnings.append(message)
        print(f"  warning: {message}", flush=True)


# -- shared steps -----------------------------------------------------------------


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


# -- scenarios --------------------------------------------------------------------


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
    run: Run, key: str, title: str, synchronous: str = "normal", history: int = 0
) -> dict[str, Any]:
    """Scenario 1 (and 5, 6): N events in NDJSON 1,000-batches, until the sink has them all."""
    events = run.plan.events
    bodies = run.bodies()
    work = run.tmp / f"scenario-{key}"
    row: dict[str, Any] = {"scenario": key, "title": title, "synchronous": synchronous}
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, Sink(work / "sink"), run)
        daemon = await started(
            stack, Daemon(work / "daemon", forwarder_config(work, sink.url, synchronous))
        )
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
                connections=NDJSON_CONNECTIONS,
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
        generator=f"aiohttp pool, {NDJSON_CONNECTIONS} keep-alive connections, NDJSON 1000s",
        sink=sink.kind,
    )
    return row


async def single_event(run: Run, transport: str) -> dict[str, Any]:
    """Scenario 2: one event per request, 32 concurrent keep-alive clients."""
    requests = run.plan.single_requests
    work = run.tmp / f"scenario-2-{transport}"
    work.mkdir(parents=True, exist_ok=True)
    use_wrk = transport == "tcp" and wrk_version() is not None
    bodies = [] if use_wrk or transport == "unix" else [event(seq) for seq in range(requests)]
    with contextlib.ExitStack() as stack:
        sink = started_sink(stack, Sink(work / "sink"), run)
        daemon = await started(stack, Daemon(work / "daemon", forwarder_config(work, sink.url)))
        if transport == "unix" and not daemon.socket_path:
            raise BenchError("the daemon reported no Unix socket listener")
        with TreeSampler(daemon.pid) as rss:
            received_before = await daemon.metric(RECEIVED, default=-1.0)
            cpu = CpuWindow(daemon.pid).start()
            since = time.monotonic()
            if use_wrk:
                figures = await wrk_fixed_requests(
                    daemon.ingest_url,
                    event(0),
                    requests,
                    SINGLE_CONNECTIONS,
                    max(60, requests // 500),
                    work,
                )
                answered = figures["requests"] - figures.get("non_2xx", 0)
                row = {
                    "events": answered,
                    "events_per_second": round(answered / figures["seconds"])
                    if figures["stopped_by"] == "time limit"
                    else round(figures["requests_per_second"] * answered / figures["requests"]),
                    "ack_p50_ms": round(figures["p50_ms"], 2),
                    "ack_p99_ms": round(figures["p99_ms"], 2),
                    "generator": f"wrk {wrk_version()}, 1 thread, {SINGLE_CONNECTIONS}"
                    f" connections, stopped by {figures['stopped_by']}",
                    "generator_cpu_share": round(figures["generator_cpu"] / figures["seconds"], 2),
                }
                if figures.get("non_2xx") or figures.get("socket_errors"):
                    run.warn(
                        f"scenario 2 tcp: wrk saw {figures.get('non_2xx', 0)} non-2xx answers"
                        f" {figures.get('socket_errors', '')}"
                    )
            elif transport == "unix":
                row = await unix_fixed_requests(daemon.socket_path, event(0), requests, work)
            else:
                load = await post_bodies(
                    daemon.ingest_url,
                    bodies,
                    content_type="application/json",
                    connections=SINGLE_CONNECTIONS,
                    events_per_body=1,
                )
                row = {
                    "events": load.events,
                    "events_per_second": round(load.events / load.elapsed),
                    "ack_p50_ms": round(percentile(load.latencies, 0.50) * 1000, 2),
                    "ack_p99_ms": round(percentile(load.latencies, 0.99) * 1000, 2),
                    "generator": f"aiohttp pool, {SINGLE_CONNECTIONS} keep-alive connections"
                    " (wrk not installed)",
                    "generator_cpu_share": round(load.generator_cpu / load.elapsed, 2),
                }
            cpu.stop()
            peak = rss.peak(since=since)
            peak_pss = rss.peak_pss(since=since)
        received = await daemon.metric(RECEIVED, default=-1.0)
    if received_before >= 0 and round(received - received_before) < row["events"]:
        run.warn(
            f"scenario 2 {transport}: the daemon counts {received - received_before:,.0f} events"
            f" received for {row['events']:,} acknowledged"
        )
    if row["generator_cpu_share"] >= 0.9:
        run.warn(
            f"scenario 2 {transport}: the load generator used {row['generator_cpu_share']:.0%}"
            " of a core: the figure may be the generator's limit, not the daemon's"
        )
    return {
        "scenario": f"2-{transport}",
        "title": f"single-event ingest, {transport.upper() if transport == 'tcp' else 'Unix'}",
        "transport": transport,
        "concurrency": SINGLE_CONNECTIONS,
        "cpu_seconds_per_100k": round(cpu.seconds / max(row["events"], 1) * 100_000, 3),
        "peak_rss_mb": round(peak / MB, 1),
        "peak_pss_mb": round(peak_pss / MB, 1),
        "sink": sink.kind,
        **row,
    }


async def unix_fixed_requests(
    socket_path: str, body: bytes, requests: int, work: Path
) -> dict[str, Any]:
    """Scenario 2 over the Unix socket: ``bench/unix_load.py`` in its own process."""
    body_file = work / "event.json"
    body_file.write_bytes(body)
    argv = [
        sys.executable,
        "-m",
        "bench.unix_load",
        "--socket",
        socket_path,
        "--requests",
        str(requests),
        "--connections",
        str(SINGLE_CONNECTIONS),
        "--body-file",
        str(body_file),
    ]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), max(120, requests / 500))
    try:
        figures = json.loads(out)
    except ValueError:
        raise BenchError(f"the Unix-socket generator failed: {err.decode()[-500:]}") from None
    if figures["error"]:
        raise BenchError(f"ingest over the Unix socket: {figures['error']}")
    return {
        "events": figures["requests"],
        "events_per_second": round(figures["requests"] / figures["elapsed"]),
        "ack_p50_ms": round(figures["p50_ms"], 2),
        "ack_p99_ms": round(figures["p99_ms"], 2),
        "generator": f"bench/unix_load.py, {SINGLE_CONNECTIONS} raw asyncio keep-alive"
        " connections over the Unix socket",
        "generator_cpu_share": round(figures["generator_cpu"] / figures["elapsed"], 2),
    }


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


# -- the report -------------------------------------------------------------------


def ratio(ours: float | None, theirs: float | None) -> str:
    """``1.23x`` or an empty cell."""
    if ours is None or not theirs:
        return ""
    return f"{ours / theirs:.2f}x"


def table_rows(run: Run) -> list[list[str]]:
    """One row per scenario: the figures and, where comparable, the ratio to syslog-ng."""
    peer = run.results.get("syslog-ng", {})
    rows = []
    for key, result in run.results.items():
        rate = result.get("events_per_second") or result.get("drain_events_per_second")
        if key == "3":
            rate = result.get("offered_events_per_second")
        comparable = key in ("1", "4", "5", "6")
        cells = [
            key,
            result.get("title", f"syslog-ng {result.get('version', '')} (durable http())"),
            f"{rate:,}" if rate is not None else "",
            ratio(rate, peer.get("events_per_second")) if comparable else "",
            f"{result['cpu_seconds_per_100k']:.2f}" if "cpu_seconds_per_100k" in result else "",
            ratio(result.get("cpu_seconds_per_100k"), peer.get("cpu_seconds_per_100k"))
            if comparable
            else "",
            f"{result['peak_rss_mb']:.1f}" if "peak_rss_mb" in result else "",
            latency_cells(result),
            notes(key, result),
        ]
        rows.append(cells)
    for key, reason in run.failures.items():
        status = "not run" if key == "syslog-ng" else "FAILED"
        rows.append([key, status, "", "", "", "", "", "", reason.splitlines()[0][:100]])
    return rows


def latency_cells(result: dict[str, Any]) -> str:
    """p50 / p99 (/ max) in ms: acknowledgement for scenario 2, ack-to-arrival for 3."""
    if "p99_ms" in result:
        return f"{result['p50_ms']:.1f} / {result['p99_ms']:.1f} / {result['max_ms']:.1f}"
    if "ack_p99_ms" in result:
        return f"{result['ack_p50_ms']:.1f} / {result['ack_p99_ms']:.1f}"
    return ""


def notes(key: str, result: dict[str, Any]) -> str:
    """The row's extra facts: generator, drain, buffer file, synchronous mode."""
    if key == "syslog-ng":
        return f"events/s to sink; {result['generator']}"
    if key.startswith("2"):
        return f"ack/s; {result['generator']}; gen CPU {result['generator_cpu_share']:.0%}"
    if key == "3":
        return (
            f"offered/s; p50/p99/max ack->sink; send->sink p99 {result['send_to_arrival_p99_ms']}"
            f" ms; generator lag p99 {result['generator_lag_p99_ms']} ms; histogram p99"
            f" {result.get('histogram_p99_ms')} ms; daemon CPU {result['cpu_share']:.0%}"
        )
    if key == "4":
        return (
            f"drain/s; RSS {result['rss_at_10pct_mb']} MB at 10% -> peak"
            f" {result['peak_rss_mb']} MB; buffer {result['buffer_empty_mb']:.1f} ->"
            f" {result['buffer_full_mb']:.0f} -> {result['buffer_after_drain_mb']:.1f} MB"
        )
    text = f"events/s to sink; synchronous={result['synchronous']}"
    if key == "5":
        text += f"; after {result['history_events']:,} older events"
    return text


HEADER = ["#", "scenario", "events/s", "vs sl", "CPU-s/100k", "vs sl", "RSS MB", "ms", "notes"]


def print_table(rows: list[list[str]]) -> None:
    """The result table, fixed-width."""
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER) - 1)]
    for row in [HEADER, *rows]:
        cells = [
            cell.rjust(w) if i in (2, 3, 4, 5, 6) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[-1]]))


@dataclass
class Target:
    """A target from the issue, what was measured against it and whether it passes."""

    name: str
    measured: str
    passed: bool | None  # None: not measured in this run


Judged = tuple[str, bool]  # what was measured, and whether it meets the target


def targets(run: Run) -> list[Target]:
    """Every target, PASS / FAIL, or n/a when a scenario it needs did not run."""
    r = run.results
    found: list[Target] = []

    def add(name: str, needs: tuple[str, ...], judge: Callable[..., Judged]) -> None:
        if all(key in r for key in needs):
            measured, passed = judge(*(r[key] for key in needs))
            found.append(Target(name, measured, passed))
        else:
            found.append(Target(name, "not measured", None))

    def vs_peer(s1: dict[str, Any], peer: dict[str, Any]) -> Judged:
        x = s1["events_per_second"] / peer["events_per_second"]
        ours, theirs = s1["events_per_second"], peer["events_per_second"]
        return f"{x:.2f}x ({ours:,} vs {theirs:,} events/s)", x >= 1.0

    add("end to end >= 1.0x syslog-ng's durable throughput", ("1", "syslog-ng"), vs_peer)
    add(
        "end to end <= 1.0 CPU-s per 100k events",
        ("1",),
        lambda s1: (f"{s1['cpu_seconds_per_100k']:.2f}", s1["cpu_seconds_per_100k"] <= 1.0),
    )
    for transport in ("tcp", "unix"):
        add(
            f"single-event ingest ({transport}) >= 10,000 acknowledged events/s",
            (f"2-{transport}",),
            lambda s2: (
                f"{s2['events_per_second']:,} ({s2['generator'].split(',')[0]})",
                s2["events_per_second"] >= 10_000,
            ),
        )
        add(
            f"single-event ingest ({transport}) p99 acknowledgement <= 25 ms",
            (f"2-{transport}",),
            lambda s2: (f"{s2['ack_p99_ms']:.1f} ms", s2["ack_p99_ms"] <= 25),
        )
    add(
        "latency at 2k events/s: p99 ingest-to-delivery <= 250 ms",
        ("3",),
        lambda s3: (
            f"{s3['p99_ms']:.1f} ms ack -> arrival (send -> arrival"
            f" {s3['send_to_arrival_p99_ms']:.1f} ms)",
            s3["p99_ms"] <= 250,
        ),
    )
    steady = [r[key] for key in ("1", "3") if key in r]
    add(
        "memory: RSS <= 60 MB steady (peak under scenarios 1 and 3)",
        ("1",) if "1" in r else ("3",),
        lambda _: (
            f"{max(x['peak_rss_mb'] for x in steady):.1f} MB summed RSS"
            f" (PSS {max(x['peak_pss_mb'] for x in steady):.1f} MB)",
            max(x["peak_rss_mb"] for x in steady) <= 60,
        ),
    )
    add(
        "memory does not grow with the backlog (peak <= 1.2x RSS at 10% of it)",
        ("4",),
        lambda s4: (
            f"{s4['rss_at_10pct_mb']} MB at 10% -> peak {s4['peak_rss_mb']} MB",
            s4["peak_rss_mb"] <= 1.2 * s4["rss_at_10pct_mb"],
        ),
    )

    def drain(s4: dict[str, Any], s1: dict[str, Any]) -> Judged:
        x = s4["drain_events_per_second"] / s1["events_per_second"]
        return (
            f"{x:.0%} ({s4['drain_events_per_second']:,} vs {s1['events_per_second']:,})",
            x >= 0.8,
        )

    add("backlog drain >= 80% of the steady end-to-end rate", ("4", "1"), drain)
    add(
        "buffer file returns near its empty size after the drain (<= empty + 16 MB)",
        ("4",),
        lambda s4: (
            f"{s4['buffer_after_drain_mb']:.1f} MB (empty {s4['buffer_empty_mb']:.1f},"
            f" with backlog {s4['buffer_full_mb']:.0f})",
            s4["buffer_after_drain_mb"] <= s4["buffer_empty_mb"] + 16,
        ),
    )

    def scale(s5: dict[str, Any], s1: dict[str, Any]) -> Judged:
        speed = s5["events_per_second"] / s1["events_per_second"]
        cost = s5["cpu_seconds_per_100k"] / s1["cpu_seconds_per_100k"]
        return (
            f"{speed:.2f}x events/s, {cost:.2f}x CPU per event",
            speed >= 0.9 and cost <= 1.1,
        )

    add("scale: scenario 5 within 10% of scenario 1", ("5", "1"), scale)
    return found


def markdown(run: Run, machine: dict[str, Any], found: list[Target]) -> str:
    """The README table."""
    out = [
        f"Measured {machine['date']} on {machine['cores']} cores ({machine['cpu']}),"
        f" {machine['memory_mb']:,} MB, Python {machine['python']}, sink {run.sink_kind},"
        f" syslog-ng {machine['syslog_ng'] or 'absent'}, with `make bench`"
        + (" --quick" if run.plan.quick else "")
        + ":",
        "",
        "| # | scenario | events/s | vs syslog-ng | CPU-s / 100k events | vs syslog-ng"
        " | peak RSS MB | p50 / p99 (/ max) ms | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table_rows(run)
    ]
    out += ["", "| target | measured | |", "|---|---|---|"]
    out += [f"| {t.name} | {t.measured} | {verdict(t)} |" for t in found]
    return "\n".join(out)


def verdict(target: Target) -> str:
    """PASS, FAIL or n/a."""
    return {True: "PASS", False: "FAIL", None: "n/a"}[target.passed]


def machine_description() -> dict[str, Any]:
    """Cores, memory, Python and tool versions, for the results file."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = next(
        int(line.split()[1]) // 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "time": time.strftime("%H:%M:%S %z"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": command_version(["nginx", "-v"], r"nginx/(\S+)", Sink.nginx_binary()),
        "syslog_ng": syslog_ng.version(),
        "wrk": wrk_version(),
        "audit_forwarder": command_version([CLI, "version"], r"(\d+\.\d+\S*)", CLI),
        "git": command_version(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], r"(\S+)", "git"
        ),
    }


def command_version(argv: list[str], pattern: str, binary: str | None) -> str | None:
    """The first match of ``pattern`` in a command's output, or None."""
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None


# -- main -------------------------------------------------------------------------


async def measure(run: Run) -> None:
    """Run the selected scenarios in order; a failed one is recorded and the rest go on."""
    chosen = run.plan.scenarios
    steps: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = []
    if chosen & {1, 4, 5, 6}:
        steps.append(("syslog-ng", "syslog-ng, scenario 1's workload", lambda: run_syslog_ng(run)))
    if 1 in chosen:
        steps.append(("1", "end to end", lambda: end_to_end(run, "1", "end to end")))
    if 2 in chosen:
        steps.append(("2-tcp", "single-event ingest, TCP", lambda: single_event(run, "tcp")))
        steps.append(
            ("2-unix", "single-event ingest, Unix socket", lambda: single_event(run, "unix"))
        )
    if 3 in chosen:
        steps.append(("3", "latency", lambda: latency(run)))
    if 4 in chosen:
        steps.append(("4", "backlog", lambda: backlog(run)))
    if 5 in chosen:
        history = run.plan.history
        steps.append(
            (
                "5",
                "scale",
                lambda: end_to_end(
                    run, "5", f"end to end after {history:,} delivered", history=history
                ),
            )
        )
    if 6 in chosen:
        steps.append(
            (
                "6",
                "synchronous: full",
                lambda: end_to_end(run, "6", "end to end, synchronous: full", "full"),
            )
        )
    for key, title, step in steps:
        print(f"- {key}: {title} ...", flush=True)
        started_at = time.monotonic()
        try:
            result = await step()
        except Exception as exc:  # one scenario's failure must not lose the others
            detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
            run.failures[key] = detail
            if key == "syslog-ng":
                print(f"  syslog-ng could not run, figures without ratios: {detail}", flush=True)
            else:
                print(f"  FAILED: {detail}", flush=True)
            continue
        run.results[key] = result
        print(f"  done in {time.monotonic() - started_at:.0f} s", flush=True)
    s1, s6 = run.results.get("1"), run.results.get("6")
    if s1 and s6:
        s6["vs_normal_events_per_second"] = round(
            s6["events_per_second"] / s1["events_per_second"], 2
        )


def parse_args(argv: list[str] | None = None) -> Plan:
    """The plan from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down counts, a few minutes")
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temporary directory (logs, configs)"
    )
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,2")
    parser.add_argument(
        "--events", type=int, default=0, help="events for scenarios 1, 2, 5, 6 and syslog-ng"
    )
    args = parser.parse_args(argv)
    plan = replace(QUICK if args.quick else Plan(), keep_temp=args.keep_temp)
    if args.only:
        try:
            chosen = frozenset(int(part) for part in args.only.split(",") if part.strip())
        except ValueError:
            parser.error(f"--only takes scenario numbers 1-6, not {args.only!r}")
        if not chosen or not chosen <= set(range(1, 7)):
            parser.error(f"--only takes scenario numbers 1-6, not {args.only!r}")
        plan = replace(plan, scenarios=chosen)
    if args.events:
        if not 1000 <= args.events < 100_000_000:
            parser.error("--events must be between 1,000 and 100,000,000")
        plan = replace(plan, events=args.events, single_requests=args.events)
    return plan


async def main(plan: Plan) -> int:
    """Measure, print and save; 1 when a scenario could not be measured."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM cancels the run like Ctrl-C does, so every process is stopped.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    machine = machine_description()
    print(
        f"audit-forwarder benchmark{' (quick)' if plan.quick else ''}: scenarios"
        f" {','.join(map(str, sorted(plan.scenarios)))} on {machine['cores']} cores,"
        f" {machine['memory_mb']:,} MB, Python {machine['python']}",
        flush=True,
    )
    if Sink.nginx_binary() is None:
        print("  sink: nginx is not installed; using the aiohttp fallback sink (lower figures)")
    with contextlib.ExitStack() as stack:
        if plan.keep_temp:
            tmp = tempfile.mkdtemp(prefix="af-bench-")
            print(f"  temporary directory (kept): {tmp}")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="af-bench-"))
        run = Run(plan, Path(tmp))
        await measure(run)
    found = targets(run)
    print()
    print_table(table_rows(run))
    print()
    print(f"sink: {run.sink_kind or 'none started'}")
    if "syslog-ng" in run.failures:
        print(f"syslog-ng: not compared ({run.failures['syslog-ng'].splitlines()[0]})")
    print()
    print("targets:")
    for target in found:
        print(f"  {verdict(target):<4}  {target.name}: {target.measured}")
    print()
    print("Markdown for the README:")
    print()
    print(markdown(run, machine, found))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "plan": {**plan.__dict__, "scenarios": sorted(plan.scenarios)},
                "sink": run.sink_kind,
                "results": run.results,
                "failures": run.failures,
                "warnings": run.warnings,
                "targets": [t.__dict__ for t in found],
            },
            indent=2,
        )
    )
    print()
    print(f"results: {out.relative_to(ROOT)}")
    return 1 if set(run.failures) - {"syslog-ng"} else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the processes the benchmark started are stopped", file=sys.stderr)
        sys.exit(130)
