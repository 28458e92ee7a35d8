"""Delivery: one worker per forwarder, strictly in order, at least once.

Each worker follows its forwarder's cursor through the buffer: it reads the
next events after its cursor, sends them, and on success (a 2xx, or a status
``statusPolicy`` counts as success) acknowledges by advancing the cursor
(group-committed by the buffer's writer, not awaited: losing an ack in a
crash only re-sends, which at-least-once allows). A failed attempt is
classified in exactly one place (:func:`send_request`, which also applies the
forwarder's ``statusPolicy``), which turns aiohttp's exceptions and HTTP
statuses into our own errors:

* connection errors, timeouts, 408, 429 and 5xx → :class:`RetryableDeliveryError`:
  the *same* request is retried forever (or until the configured limits),
  with exponential backoff and full jitter, honouring ``Retry-After`` (capped
  at the maximum backoff so a hostile receiver cannot park a forwarder);
* 400, 409, 413, 422 → :class:`RejectedContentError`: the receiver refused
  something in the body, perhaps one poison event; the batch is bisected
  (see below) so that only what is refused on its own is dead-lettered;
* any other status → :class:`PermanentDeliveryError`: the request as such is
  wrong (401, 403, 404, ...), so the whole batch goes to the dead-letter
  table with the status and response body, and the worker moves on.

Retrying the same request in place is what keeps per-forwarder order: nothing
behind a failing batch is sent until it succeeds or is dead-lettered. Workers
share nothing but the buffer, so a dead receiver never slows another
forwarder or ingest.

Batches: events the forwarder's filter refuses are skipped (their seqs are
acknowledged with the next ack, so they never hold back the cleanup); the
rest are grouped until ``batch.maxEvents``, ``batch.maxBytes`` of encoded body
or ``batch.maxWaitMs`` is reached. ``retry.maxAttempts`` /
``retry.maxAgeSeconds`` turn an endless retry into a dead letter. A disabled
forwarder sends nothing and its cursor follows the head, so it never holds
events (they are not delivered to it later).

Bisection: a batch refused with a :class:`RejectedContentError` is split in
halves, first half first; each half is a request of its own, retried with the
same backoff and limits, and split again if refused again. An event refused
alone is dead-lettered with the receiver's answer; everything else is
delivered, in order, since nothing after a part is sent before the part is
resolved. A batch of N events with k poison events costs at most about
2·k·log2(N) extra requests; each split is an attempt with outcome ``retry``
in the history and metrics and a ``batch_split`` log line. A receiver that
refuses every event costs 2N-1 requests per batch: ``statusPolicy.deadLetter``
naming the code turns bisection off.

On stop, a request already in flight may finish within the grace period (its
ack is then committed); a worker waiting in backoff stops at once, and its
events simply stay pending for the next start.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable

import aiohttp

from forwarder.buffer import batches, history
from forwarder.buffer.store import AppendSummary, StoredEvent
from forwarder.delivery.backoff import Backoff
from forwarder.delivery.filters import EventFilter
from forwarder.delivery.outcomes import ForwarderStatus, Outcomes
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.destinations.webhook.options import WebhookForwarderConfig
from forwarder.destinations.webhook.requests import BuiltRequest, RequestBuilder
from forwarder.destinations.webhook.sending import RejectedContentError, send_request
from forwarder.destinations.webhook.transport import build_connector
from forwarder.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from forwarder.logs import get_logger
from forwarder.metrics import Metrics

log = get_logger("delivery")

READ_AHEAD = 1024


class DeliveryWorker:
    """Delivers one forwarder's events. Constructing it does no I/O."""

    def __init__(
        self,
        spec: WebhookForwarderConfig,
        buffer: DeliveryBuffer,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.name = str(spec.name)
        self.status = ForwarderStatus(self.name)
        self._outcomes = Outcomes(self.name, self.status, buffer, metrics, clock)
        self.filter = EventFilter(spec.events, spec.exclude_events)
        self.requests = RequestBuilder(spec)
        self._buffer = buffer
        self._metrics = metrics
        self._clock = clock
        self._backoff = Backoff(spec.retry, rng)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._read_ahead: deque[StoredEvent] = deque()
        self._cursor = 0  # highest seq acknowledged (delivered, dead-lettered or skipped)
        self._read_upto = 0  # highest seq pulled from the buffer into _read_ahead
        self._counted_upto = 0
        self._skipped_upto = 0  # highest seq the filter refused in the batch being built

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Count what is pending, open the HTTP session and start the task."""
        self._cursor = self._read_upto = self._buffer.cursor(self.name)
        # Listen first, count up to a fixed head after: an event committed
        # while the count runs is counted exactly once, by one or the other.
        self._counted_upto = self._buffer.head_seq
        self._buffer.add_listener(self._on_append)
        if self.spec.enabled:
            rows = await self._buffer.query(
                batches.PENDING, (self._cursor + 1, self._counted_upto, self._cursor, self.name)
            )
            counts = batches.pending_counts(rows, self._cursor, self._counted_upto)
            for event_type, (count, oldest) in counts.items():
                if self.filter.accepts(event_type):
                    self.status.pending += count
                    current = self.status.oldest_pending_at
                    self.status.oldest_pending_at = (
                        oldest if current is None else min(current, oldest)
                    )
        # The last success outlives a restart in the history; new series start at 0.
        found = await self._buffer.query(history.LAST_SUCCESS, (self.name,))
        if found:
            self.status.last_success_at = float(found[0][0])
        self._metrics.add_forwarder(self.name, self.status.last_success_at)
        self._session = aiohttp.ClientSession(connector=build_connector(self.spec))
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

    def _on_append(self, summary: AppendSummary) -> None:
        # Summaries are per commit and the head only moves between commits, so
        # a summary is either wholly counted at start or wholly new.
        if not self.spec.enabled or summary.last_seq <= self._counted_upto:
            return
        accepts = self.filter.accepts
        added = sum(n for kind, n in summary.by_type.items() if accepts(kind))
        for kind, n in summary.replays.get(self.name, {}).items():
            if accepts(kind):
                added += n
        if added:
            self.status.pending += added
            if self.status.oldest_pending_at is None:
                self.status.oldest_pending_at = summary.first_received_at

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest pending event was accepted (0 when none)."""
        oldest = self.status.oldest_pending_at
        if self.status.pending <= 0 or oldest is None:
            return 0.0
        return max(0.0, self._clock() - oldest)

    # -- reading and batching --------------------------------------------------

    async def _wait_for_events(self, within: float | None) -> bool:
        """Wait until events beyond what was read are committed; False on stop/timeout."""
        # Rows up to head not returned were replays for other forwarders: waiting
        # beyond the read position alone would return at once and spin on them.
        waiter = asyncio.ensure_future(
            self._buffer.wait_beyond(max(self._read_upto, self._buffer.head_seq))
        )
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            stopper.cancel()
        return waiter in done and not self._stopping.is_set()

    async def _read_more(self) -> bool:
        """Pull the next events after the read position; False when there were none."""
        fetched = await self._buffer.read_after(self.name, self._read_upto, READ_AHEAD)
        if fetched:
            self._read_ahead.extend(fetched)
            self._read_upto = fetched[-1].seq
        return bool(fetched)

    def _take(self, batch: list[StoredEvent], budget: int) -> tuple[int, bool]:
        """Move matching events from the read-ahead into ``batch``; return (budget, full)."""
        max_events = self.spec.batch.max_events
        read_ahead = self._read_ahead  # per event: kept lean
        accepts = None if self.filter.takes_everything else self.filter.accepts
        while read_ahead:
            event = read_ahead[0]
            if accepts is not None and not accepts(event.event_type):
                read_ahead.popleft()
                self._skipped_upto = event.seq
                continue
            cost = len(event.body) + 1
            if batch and cost > budget:
                return budget, True
            batch.append(read_ahead.popleft())
            budget -= cost
            if len(batch) >= max_events:
                return budget, True
        return budget, False

    async def _next_batch(self) -> list[StoredEvent] | None:
        """The next batch within the limits; None when stopping."""
        limits = self.spec.batch
        batch: list[StoredEvent] = []
        budget = limits.max_bytes
        deadline: float | None = None
        self._skipped_upto = 0
        while not self._stopping.is_set():
            budget, full = self._take(batch, budget)
            if full:
                return batch
            if await self._read_more():
                continue
            if self._skipped_upto > self._cursor and not batch:
                # Only refused events so far: acknowledge them so they can be cleaned up.
                self._ack(self._skipped_upto)
            if batch and limits.max_events == 1:
                return batch
            if batch and deadline is None:
                deadline = time.monotonic() + limits.max_wait_ms / 1000
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not await self._wait_for_events(timeout) and batch:
                return batch
        return None

    def _fit(self, batch: list[StoredEvent], now: float) -> BuiltRequest:
        """Build the request, handing events back until the encoded body fits maxBytes."""
        built = self.requests.build(batch, now)
        while built.encoded_bytes > self.spec.batch.max_bytes and len(batch) > 1:
            keep = max(1, len(batch) * self.spec.batch.max_bytes // built.encoded_bytes)
            keep = min(keep, len(batch) - 1)
            self._read_ahead.extendleft(reversed(batch[keep:]))
            del batch[keep:]
            built = self.requests.build(batch, now)
        return built

    # -- the loop --------------------------------------------------------------

    def _ack(self, seq: int) -> None:
        if seq > self._cursor:
            self._cursor = seq
            self._buffer.ack(self.name, seq)

    async def _run(self) -> None:
        if not self.spec.enabled:
            await self._follow_head_while_disabled()
            return
        while not self._stopping.is_set():
            batch = await self._next_batch()
            if batch is None:
                return
            built = self._fit(batch, self._clock())
            if not await self._deliver_in_parts(batch, built):
                return  # stopping while still failing: the events stay pending

    async def _follow_head_while_disabled(self) -> None:
        log.info("forwarder_disabled", forwarder=self.name)
        while not self._stopping.is_set():
            self._read_upto = max(self._read_upto, self._buffer.head_seq)
            self._ack(self._read_upto)
            await self._wait_for_events(None)

    async def _deliver_in_parts(self, batch: list[StoredEvent], built: BuiltRequest) -> bool:
        """Deliver ``batch`` (built once already), bisecting refused parts; False if stopped."""
        parts = [batch]
        while parts:
            part = parts.pop()
            self.status.oldest_pending_at = part[0].received_at
            outcome = await self._deliver(part, built if part is batch else None)
            if outcome is None:
                return False
            if outcome == "split":
                half = len(part) // 2
                parts += [part[half:], part[:half]]
                continue
            self._ack(part[-1].seq)
            self.status.pending = max(0, self.status.pending - len(part))
            following = next(
                (e for e in self._read_ahead if self.filter.accepts(e.event_type)), None
            )
            self.status.oldest_pending_at = following.received_at if following else None
        return True

    async def _deliver(self, batch: list[StoredEvent], first: BuiltRequest | None) -> str | None:
        """Send until "delivered", "dead_lettered" or "split"; None if stopped first.

        ``first`` is the request already built for this batch (by ``_fit``);
        every retry is rebuilt so its signature timestamp is fresh.
        """
        assert self._session is not None
        retry = self.spec.retry
        attempt = 0
        while True:
            attempt += 1
            self.status.last_attempt_at = self._clock()
            if attempt == 1 and first is not None:
                request = first.request
            else:
                request = self.requests.build(batch, self.status.last_attempt_at).request
            started = time.monotonic()
            try:
                response = await send_request(
                    self._session,
                    request,
                    self.spec.timeout_seconds,
                    self.spec.response_validators,
                    self.spec.status_policy,
                )
            except RetryableDeliveryError as exc:
                age = self._clock() - batch[0].received_at
                exhausted = (retry.max_attempts is not None and attempt >= retry.max_attempts) or (
                    retry.max_age_seconds is not None and age >= retry.max_age_seconds
                )
                outcome = "dead_letter" if exhausted else "retry"
                self._outcomes.failure(exc, attempt, outcome)
                self._outcomes.attempt(batch, attempt, outcome, exc, started)
                if exhausted:
                    reason = f"gave up after {attempt} attempt(s): {exc.message}"
                    return "dead_lettered" if await self._dead_letter(batch, exc, reason) else None
                delay = self._backoff.delay(attempt, exc.retry_after)
                if await self._wait_or_stop(delay):
                    return None
                continue
            except PermanentDeliveryError as exc:
                if isinstance(exc, RejectedContentError) and len(batch) > 1:
                    self._outcomes.failure(exc, attempt, "retry")
                    self._outcomes.attempt(batch, attempt, "retry", exc, started)
                    log.info("batch_split", forwarder=self.name, status=exc.code, events=len(batch))
                    return "split"
                self._outcomes.failure(exc, attempt, "dead_letter")
                self._outcomes.attempt(batch, attempt, "dead_letter", exc, started)
                ok = await self._dead_letter(batch, exc, exc.message)
                return "dead_lettered" if ok else None
            self._outcomes.success(batch, response)
            self._outcomes.attempt(batch, attempt, "success", response, started)
            return "delivered"

    async def _wait_or_stop(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _dead_letter(self, batch: list[StoredEvent], exc: DeliveryError, reason: str) -> bool:
        """Dead-letter ``batch`` (retrying the write with backoff); False if stopped first."""
        recorded = await self._outcomes.dead_letter(
            batch, exc, reason, lambda failures: self._wait_or_stop(self._backoff.delay(failures))
        )
        if recorded:
            self._cursor = max(self._cursor, batch[-1].seq)
        return recorded
