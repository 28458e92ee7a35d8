"""Ingest throughput benchmark: acknowledged events/s for single-event requests and NDJSON batches.

Starts the real ``audit-forwarder`` process with a configuration written for
the run (buffer in a temporary directory, one forwarder delivering to a
counting sink in a separate process, so delivery runs as it would in
production), then drives ``POST /v1/events`` with an aiohttp client pool of
keep-alive connections: wrk (C, from Debian's ``wrk`` package) for
single-event requests over TCP, so the figure measures the daemon rather than
a Python client competing for the same two cores, and an aiohttp client pool
for the Unix socket (which wrk cannot reach) and for NDJSON batches, timing
each request's acknowledgement. Each line says which generator produced it.

Usage: ``python -m bench.ingest [--events N] [--concurrency C] [--synchronous normal|full]``
Prints one line per scenario and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Daemon, Sink, daemon_config

ROOT = Path(__file__).resolve().parent.parent
EVENT_PAD = "x" * 380
WRK_SECONDS = 10  # makes each event ~500 bytes, like a real audit event


def event(n: int) -> bytes:
    """One ~500-byte audit event."""
    return json.dumps(
        {
            "event_type": "approval.decided",
            "timestamp": "2026-03-23T14:02:30.000Z",
            "data": {"request_id": f"req_{n}", "decision": "approved", "pad": EVENT_PAD},
        }
    ).encode()


async def drive(
    url: str, bodies: list[bytes], content_type: str, concurrency: int, socket_path: str | None
) -> tuple[float, list[float]]:
    """Send every body with ``concurrency`` keep-alive clients; return wall time and latencies."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    connector: aiohttp.BaseConnector = (
        aiohttp.UnixConnector(path=socket_path, limit=concurrency)
        if socket_path
        else aiohttp.TCPConnector(limit=concurrency)
    )
    target = "http://localhost/v1/events" if socket_path else f"{url}/v1/events"
    headers = {"Content-Type": content_type}

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(target, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 202:
                    raise RuntimeError(f"ingest answered {answer.status}")
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""


async def drive_wrk(url: str, body: bytes, concurrency: int, seconds: int) -> dict[str, Any]:
    """Single-event load with wrk (C, keep-alive): acknowledged events/s and latency."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(WRK_SCRIPT % body.decode())
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"{url}/v1/events",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = (await process.communicate())[0].decode()
    script.unlink()
    figures: dict[str, Any] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["events_per_second"] = round(float(parts[1]))
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures[f"ack_p{parts[0][:2]}_ms"] = _milliseconds(parts[1])
        elif "requests in" in line:
            figures["requests"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            raise RuntimeError(f"ingest refused requests: {line.strip()}")
    return figures


def _milliseconds(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * factor, 2)
    raise ValueError(text)


async def scenario(
    name: str,
    tmp: Path,
    synchronous: str,
    bodies: list[bytes],
    events_per_body: int,
    content_type: str,
    concurrency: int,
    transport: str,
    deliver: bool,
) -> dict[str, Any]:
    """Run one scenario against a fresh daemon, buffer and sink; return its figures."""
    work = tmp / f"{name}-{synchronous}"
    sink = Sink(work / "sink").start()
    config = daemon_config(
        work,
        sink.url if deliver else "http://127.0.0.1:9/unreachable",
        retry={"initialBackoffSeconds": 3600, "maxBackoffSeconds": 3600},
    )
    config["buffer"]["synchronous"] = synchronous
    daemon = Daemon(work, config)
    try:
        await daemon.start()
        if transport == "tcp" and events_per_body == 1 and shutil.which("wrk"):
            figures = await drive_wrk(daemon.ingest_url, bodies[0], concurrency, WRK_SECONDS)
            generator = "wrk"
        else:
            elapsed, latencies = await drive(
                daemon.ingest_url,
                bodies,
                content_type,
                concurrency,
                daemon.socket_path if transport == "unix" else None,
            )
            figures = {
                "requests": len(bodies),
                "events_per_second": round(len(bodies) * events_per_body / elapsed),
                "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
                "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            }
            generator = "aiohttp"
    finally:
        daemon.stop()
        sink.stop()
    return {
        "scenario": name,
        "transport": transport,
        "synchronous": synchronous,
        "events": figures["requests"] * events_per_body,
        "concurrency": concurrency,
        "generator": generator,
        "sink": sink.kind if deliver else "none (delivery paused)",
        **figures,
    }


async def main() -> None:
    """Parse arguments, run the scenarios, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument(
        "--no-deliver",
        action="store_true",
        help="point the forwarder at a closed port so only ingest runs (events stay pending)",
    )
    args = parser.parse_args()

    singles = [event(n) for n in range(args.events)]
    batches = [
        b"\n".join(event(n) for n in range(start, min(start + 1000, args.events)))
        for start in range(0, args.events, 1000)
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="af-bench-") as tmp:
        for name, bodies, per, content_type, concurrency, transport in (
            ("single-event", singles, 1, "application/json", args.concurrency, "tcp"),
            ("single-event", singles, 1, "application/json", args.concurrency, "unix"),
            ("ndjson-1000", batches, 1000, "application/x-ndjson", 4, "tcp"),
        ):
            result = await scenario(
                f"{name}-{transport}",
                Path(tmp),
                args.synchronous,
                bodies,
                per,
                content_type,
                concurrency,
                transport,
                not args.no_deliver,
            )
            results.append(result)
            print(
                f"{result['scenario']:<20} {result['events_per_second']:>9,} events/s acknowledged"
                f"  p50 {result['ack_p50_ms']:>7.2f} ms  p99 {result['ack_p99_ms']:>7.2f} ms"
                f"  ({result['events']:,} events, {result['requests']:,} requests,"
                f" {result['concurrency']} clients, {result['generator']},"
                f" sink {result['sink']}, synchronous={result['synchronous']})",
                flush=True,
            )
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
