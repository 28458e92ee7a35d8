"""Scenario 2: single-event ingest, one event per request, over TCP and the Unix socket.

32 concurrent keep-alive clients. TCP: wrk (one thread, Lua script) stopped
once the requested number of answers has arrived (a few more in flight may be
counted; see ``bench.load.wrk_fixed_requests``), its figures: 2xx answers /
wrk's elapsed time, p50 / p99 from ``--latency``; without wrk, an aiohttp
pool, and the row says so. Unix socket (wrk cannot connect to one):
``bench/unix_load.py`` in its own process, 32 raw asyncio keep-alive
connections writing pre-built requests and timing each from send to the 202
(an aiohttp pool used two thirds of a core at 9,000 requests/s and was the
limit; this one uses about a sixth at 15,000). Both rows say which generator
produced them and how much CPU it used, since a generator saturating a core
caps the figure it reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.daemon import Daemon
from bench.load import post_bodies, wrk_fixed_requests, wrk_version
from bench.processes import BenchError, CpuWindow, TreeSampler
from bench.sinks import Sink
from bench.steps import RECEIVED, forwarder_config, percentile, started, started_sink
from bench.workload import MB, SINGLE_CONNECTIONS, Run, event


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
