"""A closed-loop HTTP/1.1 load generator for the ingest Unix socket.

wrk cannot open a Unix socket, and an aiohttp client pool spent about two
thirds of a core per 9,000 requests/s, so on a 2-core machine the figure
was the generator's, not the daemon's. This one writes pre-built requests on
raw asyncio protocols (uvloop when installed) and reads only the status line
and Content-Length of each answer: ``connections`` keep-alive connections,
each sending its next request as soon as the previous one is answered.

Run as its own process, so its CPU is measured apart from the daemon's:

    python -m bench.unix_load --socket PATH --requests N --connections 32 --body-file FILE

and it prints one JSON object: requests, elapsed seconds, p50/p99 latency
in milliseconds, CPU seconds used, and the first unexpected answer if any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class Connection(asyncio.Protocol):
    """One keep-alive connection: send, wait for one whole answer, repeat."""

    def __init__(self, request: bytes, shared: Shared) -> None:
        self.request = request
        self.shared = shared
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.WriteTransport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-typed.
        self.transport = transport  # type: ignore[assignment]
        self.send_next()

    def send_next(self) -> None:
        if self.shared.left <= 0:
            assert self.transport is not None
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.shared.left -= 1
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        status = head.split(" ", 2)[1]
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.shared.latencies.append(time.perf_counter() - self.sent_at)
        if status != "202" and self.shared.error is None:
            self.shared.error = f"{status}: {body[:300].decode(errors='replace')}"
            self.shared.left = 0
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.shared.left > 0 and self.shared.error is None:
                self.shared.error = f"connection lost: {exc!r}"
            self.done.set_result(None)


class Shared:
    """What the connections share: requests left to send, latencies, the first error."""

    def __init__(self, requests: int) -> None:
        self.left = requests
        self.latencies: list[float] = []
        self.error: str | None = None


async def run(socket_path: str, body: bytes, requests: int, connections: int) -> dict[str, Any]:
    """Send ``requests`` requests of ``body``; return the figures."""
    request = (
        b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    shared = Shared(requests)
    loop = asyncio.get_running_loop()
    cpu = os.times()
    started = time.perf_counter()
    opened = [
        await loop.create_unix_connection(lambda: Connection(request, shared), socket_path)
        for _ in range(connections)
    ]
    await asyncio.gather(*(protocol.done for _, protocol in opened))
    elapsed = time.perf_counter() - started
    after = os.times()
    latencies = sorted(shared.latencies)

    def percentile(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "elapsed": elapsed,
        "p50_ms": percentile(0.50) if latencies else None,
        "p99_ms": percentile(0.99) if latencies else None,
        "generator_cpu": (after.user + after.system) - (cpu.user + cpu.system),
        "error": shared.error,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the load, print the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.unix_load", description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--body-file", type=Path, required=True)
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes()
    try:
        import uvloop

        result = uvloop.run(run(args.socket, body, args.requests, args.connections))
    except ImportError:
        result = asyncio.run(run(args.socket, body, args.requests, args.connections))
    print(json.dumps(result))
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
