"""Scenario 9: scenario 1's workload delivered into a local NATS JetStream stream.

The same N events in NDJSON bodies of 1,000, posted by the same client pool,
but the daemon's one forwarder is ``kind: nats`` (``batch: {maxEvents: 100,
maxWaitMs: 50}`` as scenario 1, ``stream`` set) publishing to a local
``nats-server -js`` with a file-storage stream, so the row sits next to the
webhook row with only the destination changed. Delivered means acknowledged
by a JetStream PubAck; events/s = N / (the moment the daemon's delivered
counter reaches N - the first byte sent), polled every 50 ms; CPU-s per 100k
is the daemon's process tree over that window (nats-server's CPU is not
counted, as the nginx sink's is not in scenario 1). The stream's message
count is checked against N at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.daemon import Daemon
from bench.load import post_bodies
from bench.processes import BenchError, CpuWindow, TreeSampler
from bench.steps import BATCH, DELIVERED, forwarder_config, started, wait_until
from bench.workload import MB, NDJSON, NDJSON_CONNECTIONS, WARMUP_EVENTS, Run, ndjson_bodies

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STREAM = "AUDIT"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class JetStreamServer:
    """A local ``nats-server -js`` with its store under ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = _free_port()
        self.monitor_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait for ``/healthz``; create the file-storage stream."""
        if not Path(NATS_SERVER).exists():
            raise BenchError(
                "nats-server is not installed (make bench and make test-tools install it)"
            )
        self.work.mkdir(parents=True, exist_ok=True)
        args = [NATS_SERVER, "-js", "-sd", str(self.work / "js"), "-a", "127.0.0.1"]
        args += ["-p", str(self.port), "-m", str(self.monitor_port)]
        with (self.work / "nats-server.log").open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

        async def healthy() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{self.monitor_port}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 20, "nats-server /healthz", interval=0.05)
        import nats
        from nats.js.api import StorageType, StreamConfig

        connection = await nats.connect(self.url)
        try:
            config = StreamConfig(name=STREAM, subjects=["audit.>"], storage=StorageType.FILE)
            await connection.jetstream().add_stream(config)
        finally:
            await connection.close()

    async def messages(self) -> int:
        """How many messages the stream holds."""
        import nats

        connection = await nats.connect(self.url)
        try:
            info = await connection.jetstream().stream_info(STREAM)
        finally:
            await connection.close()
        return int(info.state.messages)

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


async def _until_delivered(daemon: Daemon, count: float, seconds: float) -> float:
    """Poll the delivered counter until it reaches ``count``; the wall time it did."""

    async def reached() -> bool:
        daemon.check_alive()
        return await daemon.metric(DELIVERED, default=0.0) >= count

    await wait_until(reached, seconds, f"{count:,.0f} events delivered to JetStream", 0.05)
    return time.time()


async def nats_throughput(run: Run) -> dict[str, Any]:
    """Scenario 9: N events into a local JetStream stream (file storage)."""
    events = run.plan.events
    bodies = run.bodies()
    work = run.tmp / "scenario-9"
    row: dict[str, Any] = {
        "scenario": "9",
        "title": "end to end into NATS JetStream",
        "synchronous": "normal",
    }
    with contextlib.ExitStack() as stack:
        server = JetStreamServer(work / "nats")
        stack.callback(server.stop)
        await server.start()
        config = forwarder_config(work, "http://127.0.0.1:9/unused")
        config["auditLogForwarders"] = [
            {
                "kind": "nats",
                "name": "bench",
                "servers": [server.url],
                "subject": "audit.{event_type}",
                "stream": STREAM,
                "batch": dict(BATCH),
                "retry": {"initialBackoffSeconds": 0.2, "maxBackoffSeconds": 0.5},
            }
        ]
        daemon = await started(stack, Daemon(work / "daemon", config))
        with TreeSampler(daemon.pid) as rss:
            warm = ndjson_bodies(WARMUP_EVENTS, start=900_000_000)
            await post_bodies(
                daemon.ingest_url, warm, content_type=NDJSON, connections=1, events_per_body=1000
            )
            await _until_delivered(daemon, WARMUP_EVENTS, 60)
            before = await daemon.metric(DELIVERED, default=0.0)
            cpu = CpuWindow(daemon.pid).start()
            since = time.monotonic()
            load = await post_bodies(
                daemon.ingest_url,
                bodies,
                content_type=NDJSON,
                connections=NDJSON_CONNECTIONS,
                events_per_body=1000,
            )
            finished = await _until_delivered(daemon, before + events, max(120.0, events / 2000))
            cpu.stop()
            peak = rss.peak(since=since)
        stored = await server.messages()
    if stored != events + WARMUP_EVENTS:
        raise BenchError(f"the stream holds {stored:,} messages, not {events + WARMUP_EVENTS:,}")
    elapsed = max(finished - load.started_wall, 1e-3)
    row.update(
        events=events,
        events_per_second=round(events / elapsed),
        seconds=round(elapsed, 3),
        ingest_ack_events_per_second=round(events / load.elapsed),
        cpu_seconds_per_100k=round(cpu.seconds / events * 100_000, 3),
        peak_rss_mb=round(peak / MB, 1),
        stream_messages=stored,
        generator=f"aiohttp pool, {NDJSON_CONNECTIONS} keep-alive connections, NDJSON 1000s",
        sink="nats-server -js, file storage, stream AUDIT",
    )
    return row


def nats_steps(run: Run) -> list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]]:
    """Scenario 9 as a ``bench.run`` step; none unless it was chosen."""
    if 9 not in run.plan.scenarios:
        return []
    return [("9", "NATS JetStream", lambda: nats_throughput(run))]
