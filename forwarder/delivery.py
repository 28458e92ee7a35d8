"""Delivery: one worker per forwarder, strictly in order, at least once.

Each worker follows its forwarder's cursor through the buffer: it reads the
next events after its cursor, sends them, and on a 2xx acknowledges by
advancing the cursor (group-committed by the buffer's writer, not awaited:
losing an ack in a crash only re-sends, which at-least-once allows). A failed
attempt is classified in exactly one place (:func:`send_request`), which
turns aiohttp's exceptions and HTTP statuses into our own errors:

* connection errors, timeouts, 408, 429 and 5xx → :class:`RetryableDeliveryError`:
  the *same* request is retried forever (or until the configured limits),
  with exponential backoff and full jitter, honouring ``Retry-After`` (capped
  at the maximum backoff so a hostile receiver cannot park a forwarder);
* any other status → :class:`PermanentDeliveryError`: the events go to the
  dead-letter table with the status and response body, and the worker moves on.

Retrying the same request in place is what keeps per-forwarder order: nothing
behind a failing batch is sent until it succeeds or is dead-lettered. Workers
share nothing but the buffer, so a dead receiver never slows another
forwarder or ingest.

On stop, a request already in flight may finish within the grace period (its
ack is then committed); a worker waiting in backoff stops at once, and its
events simply stay pending for the next start.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from forwarder.buffer import EventBuffer, StoredEvent
from forwarder.config import WebhookForwarderConfig
from forwarder.errors import (
    BufferUnavailableError,
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from forwarder.logs import get_logger
from forwarder.metrics import Metrics
from forwarder.sending import (
    RESPONSE_BODY_LIMIT,
    USER_AGENT,
    Backoff,
    OutgoingRequest,
    Response,
    proxy_for,
    send_request,
)

log = get_logger("delivery")

READ_AHEAD = 512
INSERT_ATTEMPT = (
    "INSERT INTO delivery_attempts (forwarder, attempted_at, attempt, events, event_ids,"
    " outcome, code, status, duration_ms, error, response_body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class ForwarderStatus:
    """The live state of one forwarder, as metrics and the admin API show it."""

    name: str
    pending: int = 0
    oldest_pending_at: float | None = None
    last_attempt_at: float | None = None
    last_status: str | None = None
    last_success_at: float | None = None
    consecutive_failures: int = 0
    dead_lettered: int = 0


class DeliveryWorker:
    """Delivers one forwarder's events. Constructing it does no I/O."""

    def __init__(
        self,
        spec: WebhookForwarderConfig,
        buffer: EventBuffer,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.name = str(spec.name)
        self.status = ForwarderStatus(self.name)
        self._buffer = buffer
        self._metrics = metrics
        self._clock = clock
        self._backoff = Backoff(spec.retry, rng)
        self._proxy = proxy_for(spec.uri)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._read_ahead: deque[StoredEvent] = deque()
        self._cursor = 0
        self._counted_upto = 0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Count what is pending, open the HTTP session and start the task."""
        self._cursor = self._buffer.cursor(self.name)
        # Listen first, count up to a fixed head after: an event committed
        # while the count runs is counted exactly once, by one or the other.
        self._counted_upto = self._buffer.head_seq
        self._buffer.add_listener(self._on_append)
        rows = await self._buffer.query(
            "SELECT count(*), min(received_at) FROM events WHERE seq > ? AND seq <= ?"
            " AND (only_forwarder IS NULL OR only_forwarder = ?)",
            (self._cursor, self._counted_upto, self.name),
        )
        count, oldest = rows[0]
        self.status.pending += int(count)
        if oldest is not None:
            self.status.oldest_pending_at = oldest
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The worker's HTTP session (None before start and after stop)."""
        return self._session

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The worker task, for the daemon to supervise."""
        return self._task

    async def stop(self, grace_seconds: float) -> bool:
        """Stop after the request in flight (within the grace); True if it finished."""
        self._stopping.set()
        finished = True
        if self._task is not None and not self._task.done():
            done, _ = await asyncio.wait({self._task}, timeout=grace_seconds)
            if not done:
                finished = False
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._buffer.remove_listener(self._on_append)
        if self._session is not None:
            await self._session.close()
            self._session = None
        return finished

    def _on_append(self, stored: Sequence[StoredEvent]) -> None:
        added = 0
        for event in stored:
            if event.seq <= self._counted_upto:
                continue
            if event.only_forwarder is None or event.only_forwarder == self.name:
                added += 1
                if self.status.oldest_pending_at is None:
                    self.status.oldest_pending_at = event.received_at
        self.status.pending += added

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest pending event was accepted (0 when none)."""
        oldest = self.status.oldest_pending_at
        if self.status.pending <= 0 or oldest is None:
            return 0.0
        return max(0.0, self._clock() - oldest)

    # -- the loop --------------------------------------------------------------

    async def _next_batch(self) -> list[StoredEvent] | None:
        while not self._read_ahead:
            if self._stopping.is_set():
                return None
            head = self._buffer.head_seq
            fetched = await self._buffer.read_after(self.name, self._cursor, READ_AHEAD)
            if fetched:
                self._read_ahead.extend(fetched)
                break
            # Rows up to head not returned are replays for other forwarders: waiting
            # beyond the cursor alone would return at once and spin on them.
            waiter = asyncio.ensure_future(self._buffer.wait_beyond(max(self._cursor, head)))
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
        return [self._read_ahead.popleft()]

    async def _run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._next_batch()
            if batch is None:
                return
            self.status.oldest_pending_at = batch[0].received_at
            delivered = await self._deliver(batch)
            if delivered is None:
                return  # stopping while the batch was still failing: it stays pending
            self._cursor = batch[-1].seq
            self.status.pending = max(0, self.status.pending - len(batch))
            self.status.oldest_pending_at = (
                self._read_ahead[0].received_at if self._read_ahead else None
            )

    def build_request(self, batch: Sequence[StoredEvent]) -> OutgoingRequest:
        """The request carrying ``batch``: one event's bytes, as ingested."""
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        if self.spec.token is not None:
            headers["Authorization"] = f"Bearer {self.spec.token.get_secret_value()}"
        body = batch[0].body if len(batch) == 1 else b"[" + b",".join(e.body for e in batch) + b"]"
        return OutgoingRequest(self.spec.method, self.spec.uri, headers, body, self._proxy)

    async def _deliver(self, batch: list[StoredEvent]) -> bool | None:
        """Send until success (True) or dead letter (False); None if stopped first."""
        assert self._session is not None
        request = self.build_request(batch)
        attempt = 0
        while True:
            attempt += 1
            self.status.last_attempt_at = self._clock()
            started = time.monotonic()
            try:
                response = await send_request(self._session, request, self.spec.timeout_seconds)
            except RetryableDeliveryError as exc:
                self._record_failure(exc, attempt, "retry")
                self._record_attempt(batch, attempt, "retry", exc, started)
                delay = self._backoff.delay(attempt, exc.retry_after)
                if await self._wait_or_stop(delay):
                    return None
                continue
            except PermanentDeliveryError as exc:
                self._record_failure(exc, attempt, "dead_letter")
                self._record_attempt(batch, attempt, "dead_letter", exc, started)
                if not await self._dead_letter(batch, exc):
                    return None
                return False
            self._record_success(batch, response, attempt)
            self._record_attempt(batch, attempt, "success", response, started)
            return True

    def _record_attempt(
        self,
        batch: list[StoredEvent],
        attempt: int,
        outcome: str,
        result: Response | DeliveryError,
        started: float,
    ) -> None:
        """Add the attempt to the history (committed with the next group) and the histogram."""
        elapsed = time.monotonic() - started
        status: int | None
        error: str | None
        if isinstance(result, Response):
            code, status, error, body = str(result.status), result.status, None, result.body
        else:
            code, status, error, body = result.code, result.status, result.message, result.body
        row = (
            self.name,
            self.status.last_attempt_at,
            attempt,
            len(batch),
            orjson.dumps([e.event_id for e in batch]).decode(),
            outcome,
            code,
            status,
            round(elapsed * 1000, 3),
            error,
            body[:RESPONSE_BODY_LIMIT],
        )
        self._buffer.submit([(INSERT_ATTEMPT, [row])])
        self._metrics.delivery_duration.labels(self.name).observe(elapsed)

    async def _wait_or_stop(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    # -- outcomes ----------------------------------------------------------------

    def _record_success(self, batch: list[StoredEvent], response: Response, attempt: int) -> None:
        now = self._clock()
        self._buffer.ack(self.name, batch[-1].seq)
        m = self._metrics
        m.delivery_attempts.labels(self.name, "success", str(response.status)).inc()
        m.events_delivered.labels(self.name).inc(len(batch))
        m.last_success.labels(self.name).set(now)
        latency = m.ingest_to_delivery.labels(self.name)
        for event in batch:
            latency.observe(max(0.0, now - event.received_at))
        if self.status.consecutive_failures:
            log.info(
                "forwarder_recovered",
                forwarder=self.name,
                status=response.status,
                failures=self.status.consecutive_failures,
            )
        self.status.consecutive_failures = 0
        self.status.last_status = str(response.status)
        self.status.last_success_at = now

    def _record_failure(self, exc: DeliveryError, attempt: int, outcome: str) -> None:
        self._metrics.delivery_attempts.labels(self.name, outcome, exc.code).inc()
        self.status.last_status = exc.code
        self.status.consecutive_failures += 1
        fields: dict[str, Any] = {
            "forwarder": self.name,
            "status": exc.code,
            "attempt": attempt,
            "error": exc.message,
        }
        if self.status.consecutive_failures == 1:
            log.warning("forwarder_failing", **fields)
        else:
            log.debug("delivery_retry", **fields)

    async def _dead_letter(self, batch: list[StoredEvent], exc: PermanentDeliveryError) -> bool:
        """Move ``batch`` to the dead-letter table; False if stopped before it was recorded."""
        now = self._clock()
        rows = [
            (
                self.name,
                e.seq,
                e.event_id,
                e.event_type,
                e.received_at,
                now,
                exc.status,
                exc.code,
                exc.message,
                exc.body[:RESPONSE_BODY_LIMIT],
                e.body,
            )
            for e in batch
        ]
        statement = (
            "INSERT INTO dead_letters (forwarder, seq, event_id, event_type, received_at,"
            " dead_at, status, code, reason, response_body, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        failures = 0
        while True:
            try:
                await self._buffer.execute([(statement, rows)], acks={self.name: batch[-1].seq})
                break
            except BufferUnavailableError as exc_buffer:
                # The events must not leave the queue unrecorded: wait and try again.
                failures += 1
                log.error("dead_letter_write_failed", forwarder=self.name, error=exc_buffer.reason)
                if await self._wait_or_stop(self._backoff.delay(failures)):
                    return False
        self._metrics.events_dead_lettered.labels(self.name).inc(len(batch))
        self.status.dead_lettered += len(batch)
        log.error(
            "events_dead_lettered",
            forwarder=self.name,
            status=exc.code,
            events=len(batch),
            first_event_id=batch[0].event_id,
        )
        return True
