"""The connection guard on real loopback listeners: the cap, shedding, and the deadlines.

Each test serves a small aiohttp app through :class:`Listeners` (the code the
daemon uses) and talks to it over real sockets, raw where the test needs to
misbehave like an attacker (drip a head, hold a connection silent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from forwarder.ingest.connections import ConnectionGauges
from forwarder.ingest.listeners import Listeners
from tests.support import wait_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[..., Awaitable[tuple[Listeners, int]]]

REQUEST = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


async def answer_ok(request: web.Request) -> web.Response:
    """Read the body and answer 200."""
    await request.read()
    return web.Response(text="ok")


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a handler on a loopback port through Listeners; closed at teardown."""
    started: list[Listeners] = []

    async def start(handler: Handler = answer_ok, **limits: Any) -> tuple[Listeners, int]:
        options: dict[str, Any] = {
            "max_connections": 100,
            "idle_timeout_seconds": 30.0,
            "request_timeout_seconds": 10.0,
            **limits,
        }
        listeners = Listeners("test", **options)
        app = web.Application()
        app.router.add_route("*", "/", handler)
        await listeners.serve_tcp(app, "127.0.0.1", 0)
        started.append(listeners)
        return listeners, int(listeners.addresses[0].rsplit(":", 1)[1])

    yield start
    for listeners in started:
        await listeners.close()


class RawConnection:
    """A client socket that can send anything, slowly or not at all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        """Connect to the loopback listener on ``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def read_to_end(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def close(self) -> None:
        """Close our side; the server may have reset it already."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[int], Awaitable[RawConnection]]]:
    """Open raw connections; every one is closed at teardown."""
    opened: list[RawConnection] = []

    async def connect(port: int) -> RawConnection:
        connection = await RawConnection.open(port)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        await connection.close()


async def exchange(port: int, request: bytes = REQUEST) -> bytes:
    """Send one request on a new connection and read until the server closes it."""
    connection = await RawConnection.open(port)
    try:
        connection.writer.write(request)
        return await connection.read_to_end()
    finally:
        await connection.close()


def split(answer: bytes) -> tuple[int, str, bytes]:
    """Status, head and body of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode(), body


async def test_over_the_cap_with_every_connection_busy_a_newcomer_gets_a_clean_503(
    serve: Serve,
) -> None:
    """At maxConnections with both requests in progress, a third client is answered 503 + close."""
    release = asyncio.Event()
    entered = 0

    async def held(request: web.Request) -> web.Response:
        nonlocal entered
        entered += 1
        await release.wait()
        return web.Response(text="done")

    listeners, port = await serve(held, max_connections=2)
    registry = CollectorRegistry()
    registry.register(ConnectionGauges(listeners.stats))
    busy = [asyncio.create_task(exchange(port)) for _ in range(2)]
    try:
        await wait_for(lambda: entered == 2, message="two requests in the handler")
        status, head, body = split(await exchange(port))
        open_while_held = registry.get_sample_value("audit_forwarder_ingest_connections")
    finally:
        release.set()  # whatever happened, let the held handlers finish
        held_answers = await asyncio.gather(*busy, return_exceptions=True)
    assert status == 503
    assert "Connection: close" in head
    assert "Retry-After: 1" in head
    assert json.loads(body)["error"] == "too_many_connections"
    assert open_while_held == 2
    assert registry.get_sample_value("audit_forwarder_ingest_connections_limit") == 2
    closed = "audit_forwarder_ingest_connections_closed_total"
    assert registry.get_sample_value(closed, {"reason": "over_limit"}) == 1

    assert [split(answer)[0] for answer in held_answers if isinstance(answer, bytes)] == [200, 200]
    assert split(await exchange(port))[0] == 200


async def test_at_the_cap_the_longest_idle_connection_is_shed_for_a_client_with_a_request(
    serve: Serve, raw: Callable[[int], Awaitable[RawConnection]]
) -> None:
    """Two silent connections fill the cap: the older is closed to serve a real request."""
    listeners, port = await serve(max_connections=2)
    oldest = await raw(port)
    await wait_for(lambda: listeners.stats().open == 1, message="first connection admitted")
    newer = await raw(port)
    await wait_for(lambda: listeners.stats().open == 2, message="second connection admitted")

    async def served() -> bool:
        return split(await exchange(port))[0] == 200

    # Refused (503) while the silent ones are fresh, served once they have waited a second.
    await wait_for(served, timeout=10, interval=0.2, message="a request served at the cap")
    assert await oldest.read_to_end() == b""
    assert listeners.stats().closed["shed"] == 1
    assert listeners.stats().open == 1
    newer.writer.write(REQUEST)
    assert split(await newer.read_to_end())[0] == 200


async def test_a_connection_dripping_its_head_is_closed_at_the_request_deadline(
    serve: Serve, raw: Callable[[int], Awaitable[RawConnection]]
) -> None:
    """A head sent a header line every 100 ms is cut at requestTimeoutSeconds, not later."""
    listeners, port = await serve(request_timeout_seconds=0.5)
    slow = await raw(port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def drip() -> None:
        slow.writer.write(b"POST / HTTP/1.1\r\n")
        for number in range(100):
            slow.writer.write(b"X-Slow-%d: y\r\n" % number)
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        assert await slow.read_to_end() == b""
    finally:
        dripping.cancel()
    assert 0.4 <= loop.time() - started < 3
    assert listeners.stats().closed["timeout"] == 1
    assert split(await exchange(port))[0] == 200


async def test_a_body_still_missing_at_the_deadline_is_answered_408_and_closed(
    serve: Serve, raw: Callable[[int], Awaitable[RawConnection]]
) -> None:
    """A head promising 100 bytes followed by 10 gets 408 request_timeout and Connection: close."""
    listeners, port = await serve(request_timeout_seconds=0.5)
    slow = await raw(port)
    slow.writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
    status, head, body = split(await slow.read_to_end())
    assert status == 408
    assert "Connection: close" in head
    assert json.loads(body)["error"] == "request_timeout"
    assert listeners.stats().closed["timeout"] == 1


async def test_the_deadline_does_not_cover_the_handler_once_the_request_is_in(
    serve: Serve,
) -> None:
    """A handler that works 0.8 s on a complete request is not cut by a 0.3 s deadline."""

    async def slow_commit(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.8)  # the work being timed, not a wait for an event
        return web.Response(text="committed")

    listeners, port = await serve(slow_commit, request_timeout_seconds=0.3)
    status, _, body = split(await exchange(port))
    assert (status, body) == (200, b"committed")
    assert listeners.stats().closed["timeout"] == 0


async def test_a_kept_alive_connection_may_wait_longer_than_the_deadline_between_requests(
    serve: Serve,
) -> None:
    """The deadline starts at a request's first byte: a 0.6 s pause, 0.3 s deadline, is fine."""
    peers: list[Any] = []

    async def record(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    _, port = await serve(record, request_timeout_seconds=0.3, idle_timeout_seconds=10.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(2):
            async with session.post(f"http://127.0.0.1:{port}/", data=b"{}") as response:
                assert response.status == 200
                await response.read()
            await asyncio.sleep(0.6)  # idle on the kept-alive connection, past the deadline
    assert len(peers) == 2
    assert peers[0] == peers[1]  # one connection, kept alive across the pause


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    serve: Serve, raw: Callable[[int], Awaitable[RawConnection]]
) -> None:
    """After its answer, a keep-alive connection that sends nothing is closed at idleTimeout."""
    listeners, port = await serve(idle_timeout_seconds=0.5)
    client = await raw(port)
    client.writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(client.reader.readexactly(2), 5) == b"ok"
    loop = asyncio.get_running_loop()
    answered = loop.time()
    assert await client.read_to_end() == b""
    assert 0.4 <= loop.time() - answered < 3
    await wait_for(lambda: listeners.stats().open == 0, message="the connection forgotten")
