"""The load generators: a closed-loop aiohttp pool, an open-loop steady offer, and wrk.

``post_bodies`` is closed loop: each of a pool of keep-alive connections
sends its next pre-built body as soon as the previous one is acknowledged.
``offer_steady`` is open loop: it starts each single-event request at its
scheduled time whether or not earlier ones were answered, so a slow daemon
does not lower the offered load, and it measures its own event loop's lag,
which bounds the error of its timings. wrk drives single-event ingest over
TCP when it is installed; it has no request-count option, so
``wrk_fixed_requests`` has a Lua script end the run once enough answers came.
While a Python generator is timed, the garbage collector is paused
(``collector_paused``): a full collection stalls the event loop for tens to
hundreds of milliseconds, which would show up as latency the daemon did not
cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.processes import BenchError, cpu_seconds


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a load generator is timed.

    A full collection in the benchmark's own process stalls its event loop for
    tens to hundreds of milliseconds (growing with the objects it holds), which
    would show up as acknowledgement latency the daemon did not cause. What
    the generator leaves for the collector meanwhile is collected afterwards.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class LoadResult:
    """What a closed-loop load generator saw."""

    requests: int
    events: int
    elapsed: float  # seconds from the first request sent to the last answer
    started_wall: float  # time.time() just before the first byte was sent
    latencies: list[float]  # per request, seconds from send to acknowledgement
    generator_cpu: float  # CPU seconds this process spent meanwhile


async def post_bodies(
    url: str,
    bodies: Sequence[bytes],
    *,
    content_type: str,
    connections: int,
    events_per_body: int,
) -> LoadResult:
    """POST every body to ``/v1/events`` with an aiohttp pool of keep-alive connections.

    ``connections`` clients each send their next body as soon as the previous
    one is acknowledged (202); any other answer raises BenchError.
    """
    connector = aiohttp.TCPConnector(limit=connections)
    target = f"{url}/v1/events"
    headers = {"Content-Type": content_type}
    latencies: list[float] = []
    next_body = iter(bodies)

    async def client(session: aiohttp.ClientSession) -> None:
        for body in next_body:
            sent = time.perf_counter()
            async with session.post(target, data=body, headers=headers) as answer:
                text = await answer.read()
                if answer.status != 202:
                    raise BenchError(
                        f"ingest answered {answer.status}: {text[:300].decode(errors='replace')}"
                    )
            latencies.append(time.perf_counter() - sent)

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = os.times()
        started_wall = time.time()
        started = time.perf_counter()
        try:
            with collector_paused():
                await asyncio.gather(*(client(session) for _ in range(connections)))
        except aiohttp.ClientError as exc:
            raise BenchError(f"ingest request failed: {exc!r}") from None
        elapsed = time.perf_counter() - started
        after = os.times()
    return LoadResult(
        requests=len(bodies),
        events=len(bodies) * events_per_body,
        elapsed=elapsed,
        started_wall=started_wall,
        latencies=latencies,
        generator_cpu=(after.user + after.system) - (cpu.user + cpu.system),
    )


@dataclass
class OfferResult:
    """What an open-loop generator saw: per event, when it was sent and acknowledged."""

    sent_ns: list[int]  # CLOCK_MONOTONIC ns just before each request
    acked_ns: list[int]  # CLOCK_MONOTONIC ns when each 202 was read
    elapsed: float  # seconds from the first send to the last send
    lag_ms: list[float]  # how late a 5 ms timer fired: the generator's own delay


async def measure_lag(lag_ms: list[float]) -> None:
    """Append how late (ms) a 5 ms timer fires, until cancelled: the event loop's lag."""
    while True:
        due = time.monotonic() + 0.005
        await asyncio.sleep(0.005)
        lag_ms.append((time.monotonic() - due) * 1000)


def as_bench_error(exc: BaseException) -> BenchError:
    """A request's failure as a BenchError (kept as is when it already is one)."""
    return exc if isinstance(exc, BenchError) else BenchError(f"ingest request failed: {exc!r}")


async def offer_steady(
    url: str, bodies: Sequence[bytes], rate: float, connections: int
) -> OfferResult:
    """Send one single-event request per body at a steady ``rate`` per second (open loop).

    Each request is started at its scheduled time whether or not earlier ones
    were answered (up to ``connections`` in flight; more wait for a
    connection), so a slow daemon does not lower the offered load. A 5 ms
    timer measures the event loop's lag meanwhile: a 202 is read (and its
    time taken) up to that late, which bounds the error of ``acked_ns``.
    """
    sent_ns = [0] * len(bodies)
    acked_ns = [0] * len(bodies)
    target = f"{url}/v1/events"
    headers = {"Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession, index: int, body: bytes) -> None:
        sent_ns[index] = time.monotonic_ns()
        async with session.post(target, data=body, headers=headers) as answer:
            text = await answer.read()
            acked_ns[index] = time.monotonic_ns()
            if answer.status != 202:
                raise BenchError(
                    f"ingest answered {answer.status}: {text[:300].decode(errors='replace')}"
                )

    lag_ms: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        lag_task = asyncio.create_task(measure_lag(lag_ms))
        try:
            with collector_paused():
                started = time.monotonic()
                for index, body in enumerate(bodies):
                    if failures:
                        break
                    delay = started + index / rate - time.monotonic()
                    if delay > 0.001:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(one(session, index, body))
                    in_flight.add(task)
                    task.add_done_callback(finished)
                elapsed = time.monotonic() - started
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            lag_task.cancel()
            for task in list(in_flight):
                task.cancel()
    if failures:
        raise as_bench_error(failures[0])
    return OfferResult(sent_ns=sent_ns, acked_ns=acked_ns, elapsed=elapsed, lag_ms=lag_ms)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%(body)s]==]
local share = %(requests)d
local answered = 0
function response(status, headers, body)
  answered = answered + 1
  if answered == share then
    io.write("%(marker)s\\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""
WRK_MARKER = "BENCH-SHARE-ANSWERED"


def wrk_version() -> str | None:
    """wrk's version string, or None when it is not installed."""
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"wrk (\S+)", out)
    return match.group(1) if match else "unknown"


async def wrk_fixed_requests(
    url: str, body: bytes, requests: int, connections: int, seconds: int, work: Path
) -> dict[str, Any]:
    """``requests`` single-event requests with wrk (one thread, keep-alive).

    wrk has no request-count option and its summary divides by the wall time
    of the whole run, so the Lua script stops wrk's thread when the
    ``requests``-th answer arrives and prints a marker; on the marker wrk gets
    SIGINT, which ends its run at once and makes it report the real elapsed
    time. Answers already read in the same poll round are counted too, so wrk
    may report a few more than ``requests``; the figures use its count.
    ``seconds`` bounds the run: if it passes first, the figures are the count
    measured until then (``stopped_by`` says which happened).
    """
    if b"]==]" in body:
        raise BenchError("the event body cannot be embedded in the wrk script")
    script = work / "single.lua"
    script.write_text(
        WRK_SCRIPT % {"body": body.decode(), "requests": requests, "marker": WRK_MARKER}
    )
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"{url}/v1/events",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    stopped_by = "time limit"
    generator_cpu = 0.0
    try:
        async with asyncio.timeout(seconds + 30):
            while raw := await process.stdout.readline():
                line = raw.decode(errors="replace").rstrip()
                if line == WRK_MARKER:
                    generator_cpu = cpu_seconds(process.pid)
                    process.send_signal(signal.SIGINT)
                    stopped_by = "request count"
                    continue
                lines.append(line)
            await process.wait()
    except TimeoutError:
        raise BenchError("wrk did not finish in time") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    figures = parse_wrk(lines)
    figures.update(stopped_by=stopped_by, generator_cpu=generator_cpu)
    return figures


def parse_wrk(lines: list[str]) -> dict[str, Any]:
    """Figures from wrk's summary: requests, seconds, requests/s, p50/p99, errors."""
    figures: dict[str, Any] = {}
    for line in lines:
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["requests_per_second"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures[f"p{parts[0][:2]}_ms"] = _milliseconds(parts[1])
        elif "requests in" in line:
            figures["requests"] = int(parts[0])
            figures["seconds"] = _seconds(parts[3].rstrip(","))
        elif line.strip().startswith("Non-2xx"):
            figures["non_2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors"):
            figures["socket_errors"] = line.strip()
    if "requests" not in figures or "requests_per_second" not in figures:
        raise BenchError("wrk's output has no summary:\n" + "\n".join(lines))
    return figures


def _milliseconds(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("m", 60_000.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise BenchError(f"wrk printed an unknown duration {text!r}")


def _seconds(text: str) -> float:
    return _milliseconds(text) / 1000
