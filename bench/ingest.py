"""Ingest throughput benchmark: acknowledged events/s for single-event requests and NDJSON batches.

Starts the real ``audit-forwarder`` process with a configuration written for
the run (buffer in a temporary directory, one forwarder delivering to a
counting sink in a separate process, so delivery runs as it would in
production), then drives ``POST /v1/events`` with an aiohttp client pool of
keep-alive connections. An aiohttp pool is used rather than wrk because it
can measure each request's acknowledgement latency and the same client code
also speaks to the Unix socket.

Usage: ``python bench/ingest.py [--events N] [--concurrency C] [--synchronous normal|full]``
Prints one line per scenario and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("audit-forwarder"))
EVENT_PAD = "x" * 380  # makes each event ~500 bytes, like a real audit event

SINK = """
import sys
from aiohttp import web
count = 0
async def sink(request):
    global count
    await request.read()
    count += 1
    return web.Response(status=200)
async def total(request):
    return web.json_response({"requests": count})
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_get("/count", total)
app.router.add_route("*", "/{tail:.*}", sink)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def event(n: int) -> bytes:
    """One ~500-byte audit event."""
    return json.dumps(
        {
            "event_type": "approval.decided",
            "timestamp": "2026-03-23T14:02:30.000Z",
            "data": {"request_id": f"req_{n}", "decision": "approved", "pad": EVENT_PAD},
        }
    ).encode()


def free_port() -> int:
    """A free loopback TCP port for the sink."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_ready(url: str) -> None:
    """Poll /readyz until 200 (30 s deadline)."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


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


async def scenario(
    name: str,
    tmp: Path,
    synchronous: str,
    bodies: list[bytes],
    events_per_body: int,
    content_type: str,
    concurrency: int,
    transport: str,
) -> dict[str, Any]:
    """Run one scenario against a fresh daemon and buffer; return its figures."""
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    work = tmp / name
    work.mkdir()
    config = {
        "ingest": {"host": "127.0.0.1", "port": 0, "unixSocket": str(work / "ingest.sock")},
        "buffer": {"path": str(work / "buffer.db"), "synchronous": synchronous},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "warning", "format": "json"},
        "auditLogForwarders": [{"kind": "webhook", "uri": f"http://127.0.0.1:{sink_port}/in"}],
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    log_path = work / "daemon.log"
    with log_path.open("wb") as out:
        daemon = subprocess.Popen(
            [CLI, "run", "--config", str(work / "config.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AUDIT_FORWARDER_LOGGING__LEVEL": "info"},
        )
    try:
        started_line: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while not started_line and time.monotonic() < deadline:
            for line in log_path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("event") == "daemon_started":
                    started_line = entry
            await asyncio.sleep(0.05)
        tcp = next(a for a in started_line["ingest"] if not a.startswith("unix:"))
        await wait_ready(f"http://{started_line['metrics'][0]}/readyz")
        elapsed, latencies = await drive(
            f"http://{tcp}",
            bodies,
            content_type,
            concurrency,
            str(work / "ingest.sock") if transport == "unix" else None,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        sink.terminate()
        sink.wait(timeout=10)
    events = len(bodies) * events_per_body
    return {
        "scenario": name,
        "transport": transport,
        "synchronous": synchronous,
        "events": events,
        "requests": len(bodies),
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed),
        "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


async def main() -> None:
    """Parse arguments, run the scenarios, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
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
            )
            results.append(result)
            print(
                f"{result['scenario']:<20} {result['events_per_second']:>9,} events/s acknowledged"
                f"  p50 {result['ack_p50_ms']:>7.2f} ms  p99 {result['ack_p99_ms']:>7.2f} ms"
                f"  ({result['events']:,} events, {result['requests']:,} requests,"
                f" {result['concurrency']} clients, synchronous={result['synchronous']})",
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
