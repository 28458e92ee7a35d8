"""Per-connection policy of a listener: a cap on open connections and deadlines.

aiohttp's server accepts every connection the kernel hands it and waits for a
request head as long as ``keepalive_timeout`` allows: a flood of idle
connections uses up the process's file descriptors (and then every client is
reset, buffer and metrics included), and a client that drips a header byte
every few seconds (slowloris) holds a connection for as long as it likes.
:class:`GuardedConnection` wraps aiohttp's own protocol (``runner.server()``)
and adds what it lacks, in the way the asyncio protocol API allows without
touching aiohttp's internals:

* **A cap** (:class:`ConnectionGuard`, shared by a group of listeners). A
  connection over it is answered at once with a canned ``503`` and
  ``Connection: close`` and never reaches aiohttp: the client gets an answer
  it can retry on, not a reset. Our side is half-closed right after the answer
  and what the client still sends is read and dropped until it closes (or a
  short linger passes), because closing a socket with unread data sends a
  reset that can destroy the answer before the client reads it. Lingering
  refusals hold descriptors too, so their number is bounded by what the
  open-files limit leaves (``max_lingering``); past it a refusal is reset.
* **Shedding before refusing.** At the cap, the connection that has waited
  longest without a request in progress (idle keep-alive, never sent a byte,
  or dripping a head) is closed to make room, if it has waited at least
  ``shed_idle_after_seconds``; only when every connection is inside a request
  (or has just opened) is the newcomer refused. So thousands of idle
  connections cannot lock out a client that has a request to make, and a
  legitimate burst is refused cleanly rather than shed.
* **A request deadline**, counted from the connection opening, or on a
  kept-alive connection from the first byte of the next request, until the
  whole request (head and body) has arrived. Past it, a connection still
  waiting for its head is closed; a handler still waiting for the body gets
  the body stream failed and answers ``408`` with ``Connection: close``.
  The deadline never covers the handler's own work (the buffer commit).
* Idle keep-alive connections are closed by aiohttp's ``keepalive_timeout``,
  which the listener sets from ``ingest.idleTimeoutSeconds``.

The middleware (:meth:`ConnectionGuard.middleware`) is the one place that
knows when a request head has been parsed and when the handler is done; it is
appended to the app as the innermost middleware so that the ``408`` it
makes out of an expired body passes through the app's error middleware as an
answer, not as a failure to log.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forwarder.ingest.api import error_response
from forwarder.logs import get_logger

log = get_logger("listeners")

# A refused client gets this long to read the 503 and close before we close.
REJECT_LINGER_SECONDS = 2.0
# The limit-reached warning is cleared (and logged) below this share of the cap.
LIMIT_CLEARED_SHARE = 0.9

REJECT_BODY = (
    b'{"error":"too_many_connections",'
    b'"message":"the forwarder has reached its connection limit; retry shortly"}'
)
REJECT_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s" % (len(REJECT_BODY), REJECT_BODY)
)

Reason = Literal["over_limit", "shed", "timeout"]
REASONS: tuple[Reason, ...] = ("over_limit", "shed", "timeout")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of one group of listeners, resolved (no ``None``)."""

    max_connections: int
    idle_timeout_seconds: float
    request_timeout_seconds: float
    # Refusals still lingering at once; past this many a refusal is reset.
    max_lingering: int = 128
    shed_idle_after_seconds: float = 1.0


@dataclass(frozen=True)
class ConnectionStats:
    """A snapshot of a guard's counts, for metrics and the shutdown log."""

    open: int
    limit: int
    closed: dict[Reason, int]


class RequestTimedOutError(Exception):
    """Set on a request's body stream when its deadline passes before the body is in."""


class ConnectionGuard:
    """Counts, caps, sheds and times out the connections of a group of listeners."""

    def __init__(self, name: str, limits: ConnectionLimits) -> None:
        self.name = name
        self.limits = limits
        self.closed: dict[Reason, int] = dict.fromkeys(REASONS, 0)
        # aiohttp's per-connection protocol -> our wrapper, for the middleware.
        self._admitted: dict[object, GuardedConnection] = {}
        # Admitted connections with no request in progress, longest-waiting first.
        self._waiting: OrderedDict[GuardedConnection, float] = OrderedDict()
        self._lingering: set[GuardedConnection] = set()
        self._at_limit = False

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet closed."""
        return len(self._admitted)

    def stats(self) -> ConnectionStats:
        """Open connections, the cap, and how many were closed for each reason."""
        return ConnectionStats(self.open_connections, self.limits.max_connections, {**self.closed})

    def protocol_factory(
        self, make_handler: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's ``runner.server``."""

        def factory() -> asyncio.Protocol:
            return GuardedConnection(self, make_handler)

        return factory

    def close_lingering(self) -> None:
        """Close refused connections still lingering (the listener is going away)."""
        for connection in list(self._lingering):
            connection.close()

    # -- admission ---------------------------------------------------------------

    def admit(self, connection: GuardedConnection, now: float) -> bool:
        """Make room for ``connection`` (shedding if needed); False when it must be refused."""
        if len(self._admitted) < self.limits.max_connections:
            return True
        self._limit_reached()
        if self._waiting:
            oldest, since = next(iter(self._waiting.items()))
            if now - since >= self.limits.shed_idle_after_seconds:
                self.closed["shed"] += 1
                self.forget(oldest)
                oldest.close()
                return True
        self.closed["over_limit"] += 1
        return False

    def register(self, connection: GuardedConnection, handler: object, now: float) -> None:
        """Count an admitted connection; it waits for its first request."""
        self._admitted[handler] = connection
        self._waiting[connection] = now

    def linger(self, connection: GuardedConnection) -> bool:
        """Track a refused connection while it lingers; False when too many already do."""
        if len(self._lingering) >= self.limits.max_lingering:
            return False
        self._lingering.add(connection)
        return True

    def forget(self, connection: GuardedConnection) -> None:
        """Stop counting a connection (closed, shed, or done lingering). Idempotent."""
        self._lingering.discard(connection)
        self._waiting.pop(connection, None)
        if connection.handler is not None:
            self._admitted.pop(connection.handler, None)
        if self._at_limit and self.open_connections < LIMIT_CLEARED_SHARE * (
            self.limits.max_connections
        ):
            self._at_limit = False
            log.info(
                "connection_limit_cleared",
                listener=self.name,
                open_connections=self.open_connections,
                closed=self.closed,
            )

    def _limit_reached(self) -> None:
        if not self._at_limit:
            self._at_limit = True
            log.warning(
                "connection_limit_reached",
                listener=self.name,
                max_connections=self.limits.max_connections,
            )

    # -- requests ----------------------------------------------------------------

    def request_started(self, connection: GuardedConnection) -> None:
        """A request head has been parsed: the connection is busy, not sheddable."""
        self._waiting.pop(connection, None)

    def request_finished(self, connection: GuardedConnection, now: float) -> None:
        """The handler is done: the connection waits for its next request."""
        if connection.handler in self._admitted:
            self._waiting[connection] = now
            self._waiting.move_to_end(connection)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Mark the request's connection busy while the handler runs; 408 on a late body."""
        connection = self._admitted.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.request_started(request.content)
        try:
            return await handler(request)
        except RequestTimedOutError:
            response = error_response(
                408,
                "request_timeout",
                f"the request was not received within "
                f"{self.limits.request_timeout_seconds:g} seconds",
            )
            response.force_close()
            return response
        finally:
            connection.request_finished()


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, the guard's policy around it."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], asyncio.Protocol]):
        self._guard = guard
        self._make_handler = make_handler
        self.handler: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self._body: StreamReader | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit (maybe shedding another) and hand over to aiohttp, or refuse with 503."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        now = self._loop.time()
        if not self._guard.admit(self, now):
            self._refuse(transport)
            return
        handler = self._make_handler()
        self.handler = handler
        self._guard.register(self, handler, now)
        self._arm_deadline()
        handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Pass bytes to aiohttp; the first byte of a new request starts its deadline."""
        if self.handler is None:
            return  # refused: what the client still sends is dropped
        if not self._in_request and self._deadline is None:
            self._arm_deadline()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        """A refused client has read its answer and closed: close too."""
        if self.handler is None:
            return None
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop counting the connection and let aiohttp clean up."""
        self._cancel_deadline()
        self._guard.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        """Flow control belongs to aiohttp's protocol."""
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        """Flow control belongs to aiohttp's protocol."""
        if self.handler is not None:
            self.handler.resume_writing()

    # -- policy --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (shed, timed out, or a refusal done lingering)."""
        self._cancel_deadline()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def request_started(self, body: StreamReader) -> None:
        """The head is parsed; the deadline stays only while the body is still coming."""
        self._in_request = True
        self._body = body
        if body.is_eof():
            self._cancel_deadline()
        self._guard.request_started(self)

    def request_finished(self) -> None:
        """The handler is done; the next request's deadline starts with its first byte."""
        self._in_request = False
        self._body = None
        self._cancel_deadline()
        self._guard.request_finished(self, self._loop.time())

    def _refuse(self, transport: asyncio.Transport) -> None:
        if not self._guard.linger(self):
            transport.abort()
            return
        transport.write(REJECT_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self._loop.call_later(REJECT_LINGER_SECONDS, self.close)

    def _arm_deadline(self) -> None:
        self._deadline = self._loop.call_later(
            self._guard.limits.request_timeout_seconds, self._deadline_passed
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._in_request:
            body = self._body
            if body is not None and not body.is_eof():
                self._guard.closed["timeout"] += 1
                body.set_exception(RequestTimedOutError())
            return
        self._guard.closed["timeout"] += 1
        self.close()


class ConnectionGauges(Collector):
    """The ingest listeners' connections, read at scrape time from the guard."""

    def __init__(self, stats: Callable[[], ConnectionStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        """Yield the families (called by the registry on every scrape)."""
        stats = self._stats()
        open_now = GaugeMetricFamily(
            "audit_forwarder_ingest_connections", "Connections open to the ingest listeners now."
        )
        open_now.add_metric([], stats.open)
        limit = GaugeMetricFamily(
            "audit_forwarder_ingest_connections_limit",
            "The most connections the ingest listeners keep open (ingest.maxConnections).",
        )
        limit.add_metric([], stats.limit)
        closed = CounterMetricFamily(
            "audit_forwarder_ingest_connections_closed",
            "Connections the ingest listeners closed early, by reason: over_limit (answered"
            " 503 at the cap), shed (waiting without a request, closed to make room),"
            " timeout (no complete request within ingest.requestTimeoutSeconds).",
            labels=["reason"],
        )
        for reason in REASONS:
            closed.add_metric([reason], stats.closed[reason])
        return [open_now, limit, closed]
