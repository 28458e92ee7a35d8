"""Delivery: one worker per forwarder, batches formed in order, at least once.

Each worker follows its forwarder's cursor through the buffer: it forms the
next batch (:mod:`forwarder.delivery.batching`), sends it, and acknowledges
what is resolved. Acks are group-committed by the buffer's writer, not
awaited: losing one in a crash only re-sends, which at-least-once allows.
A failed attempt is classified by the forwarder's destination
(:mod:`forwarder.destinations.adapter`: a webhook's ``send_request`` with its
``statusPolicy``, a JetStream PubAck's error code) into our own errors; the
destination only builds, sends and classifies, everything below is written
once here for every kind:

* :class:`RetryableDeliveryError` (connection errors, timeouts, 408, 429,
  5xx): the *same* request again, forever or until ``retry.maxAttempts`` /
  ``retry.maxAgeSeconds`` make it a dead letter, with exponential backoff and
  full jitter, honouring ``Retry-After`` (capped at the maximum backoff);
* :class:`RejectedContentError` (400, 409, 413, 422): something in the body
  was refused, perhaps one poison event: the batch is split in halves, first
  half first, each a request of its own, down to the events refused alone,
  which are dead-lettered (about 2·k·log2(N) extra requests for k poison
  events in N; each split is a ``retry`` attempt and a ``batch_split`` log
  line; ``statusPolicy.deadLetter`` naming the code turns bisection off);
* :class:`PermanentDeliveryError` (401, 403, 404, ...): the request as such
  is wrong, so the whole batch is dead-lettered with the answer.

Requests in flight: with ``ordering: strict`` (the default) one batch is
outstanding at a time and retried in place, so nothing behind a failing
batch is sent until it is resolved, and batches arrive in ingest order. With
``ordering: relaxed`` up to the current limit (``maxInFlight``, or adaptive
below it: :mod:`forwarder.delivery.concurrency`) are outstanding, each
retried and bisected on its own, so a retried batch may arrive after later
ones. Either way the cursor advances only over the contiguous prefix of
resolved batches (:mod:`forwarder.delivery.window`): a crash re-sends, never
skips. A ``Retry-After`` holds every new request of the forwarder, not only
the retry of the batch that got it: the receiver asked *us* to wait. Every
request first takes its tokens from the rate limits
(:mod:`forwarder.delivery.rate_limit`). Workers share nothing but the
buffer, so a dead receiver never slows another forwarder or ingest. A
disabled forwarder sends nothing and its cursor follows the head.

On stop, requests in flight may finish within the grace period (their acks
are then committed); those waiting in backoff, for a ``Retry-After`` or for
tokens stop at once, and their events stay pending for the next start. A
delivery task that fails unexpectedly stops the others, and the worker's
task ends with its exception for the owner to report.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Literal

from forwarder.buffer import history
from forwarder.buffer.store import StoredEvent
from forwarder.delivery.backoff import Backoff
from forwarder.delivery.batching import BatchReader
from forwarder.delivery.chain import chained
from forwarder.delivery.concurrency import ConcurrencyLimit
from forwarder.delivery.destinations import build_destination
from forwarder.delivery.filters import EventFilter
from forwarder.delivery.outcomes import ForwarderStatus, Outcomes
from forwarder.delivery.pending import PendingCount
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.delivery.rate_limit import RateLimiter
from forwarder.delivery.window import Slot, Window
from forwarder.destinations.adapter import Destination, Payload
from forwarder.destinations.kinds import AnyForwarderConfig
from forwarder.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RejectedContentError,
    RetryableDeliveryError,
)
from forwarder.logs import get_logger
from forwarder.metrics import Metrics

log = get_logger("delivery")

Outcome = Literal["delivered", "dead_lettered", "split"]


class DeliveryWorker:
    """Delivers one forwarder's events. Constructing it does no I/O."""

    def __init__(
        self,
        spec: AnyForwarderConfig,
        buffer: DeliveryBuffer,
        metrics: Metrics,
        *,
        destination: Destination[Any] | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.spec = spec
        self.name = str(spec.name)
        # With integrity, acks carry the chain state (forwarder.delivery.chain).
        buffer, self._chain = chained(self.name, spec.integrity, buffer)
        self.status = ForwarderStatus(self.name)
        self._outcomes = Outcomes(self.name, self.status, buffer, metrics, clock)
        self.filter = EventFilter(spec.events, spec.exclude_events)
        # Only build / send / classify: every decision about the answer is taken here.
        self.destination = build_destination(spec) if destination is None else destination
        self._buffer = buffer
        self._metrics = metrics
        self._clock = clock
        self._backoff = Backoff(spec.retry, rng)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._reader = BatchReader(
            spec, buffer, self.filter, self.destination, self._stopping, self._skipped
        )
        self._window = Window(0)
        self.concurrency = ConcurrencyLimit(spec)
        self._rate = RateLimiter(spec.rate_limit, spec.batch.max_events, self._throttled)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sending = 0  # requests sent and not yet answered
        self._hold_until = 0.0  # time.monotonic() before which no request goes (Retry-After)
        self._crash: BaseException | None = None
        self._pending = PendingCount(self.name, self.filter, self.status)
        self._sending_gauge = metrics.delivery_in_flight.labels(self.name)
        self._limit_gauge = metrics.concurrency_limit.labels(self.name)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Count what is pending, open the destination's connection and start the task."""
        cursor = self._buffer.cursor(self.name)
        self._window = Window(cursor)
        self._reader.read_upto = cursor
        if self._chain is not None:
            await self._chain.load(self._buffer, cursor)
        if self.spec.enabled:
            await self._pending.start(self._buffer, cursor)
        # The last success outlives a restart in the history; new series start at 0.
        found = await self._buffer.query(history.LAST_SUCCESS, (self.name,))
        if found:
            self.status.last_success_at = float(found[0][0])
        self._metrics.add_forwarder(self.name, self.status.last_success_at)
        self._sending_gauge.set(0)
        self._limit_gauge.set(self.concurrency.limit)
        await self.destination.open()
        self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The worker task, for the daemon to supervise."""
        return self._task

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._sending

    @property
    def throttled(self) -> bool:
        """Whether a request is waiting for the rate limit now."""
        return self._rate.waiting > 0

    async def stop(self, grace_seconds: float) -> bool:
        """Stop after the requests in flight (within the grace); True if they finished."""
        self._stopping.set()
        finished = True
        if self._task is not None and not self._task.done():
            done, _ = await asyncio.wait({self._task}, timeout=grace_seconds)
            if not done:
                finished = False
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._pending.stop(self._buffer)
        await self.destination.close()
        return finished

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest pending event was accepted (0 when none)."""
        oldest = self.status.oldest_pending_at
        if self.status.pending <= 0 or oldest is None:
            return 0.0
        return max(0.0, self._clock() - oldest)

    # -- the loop --------------------------------------------------------------

    async def _run(self) -> None:
        if not self.spec.enabled:
            await self._follow_head_while_disabled()
            return
        try:
            await self._dispatch()
            if self._in_flight:  # stopping: the requests in flight may finish
                await asyncio.wait(set(self._in_flight))
        finally:
            # Only left unfinished when this task is cancelled (the grace ran out).
            for task in self._in_flight:
                task.cancel()
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._crash is not None:
            raise self._crash

    async def _dispatch(self) -> None:
        """Form batches in order and start each one's delivery while the limit allows."""
        while not self._stopping.is_set():
            if len(self._in_flight) >= self.concurrency.limit:
                self.concurrency.saturated()
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = await self._reader.next_batch(self.name)
            if batch is None:
                return
            if self._chain is not None:
                batch = await self._chain.assign(self._buffer, batch)
            built = self._reader.fit(batch, self._clock())
            slot = self._window.open(batch, batch[-1].seq)
            task = asyncio.create_task(
                self._deliver_in_parts(slot, batch, built), name=f"deliver-{self.name}-batch"
            )
            self._in_flight.add(task)
            task.add_done_callback(self._delivery_done)

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # Never run on silently degraded: stop sending, end the worker with the error.
        if self._crash is None:
            self._crash = task.exception()
        self._stopping.set()

    async def _follow_head_while_disabled(self) -> None:
        log.info("forwarder_disabled", forwarder=self.name)
        while not self._stopping.is_set():
            self._reader.read_upto = max(self._reader.read_upto, self._buffer.head_seq)
            self._skipped(self._reader.read_upto)
            await self._reader.wait_for_events(None)

    def _skipped(self, upto: int) -> None:
        """Seqs up to ``upto`` held only events this forwarder does not take."""
        cursor = self._window.skip(upto)
        if cursor is not None:
            self._buffer.ack(self.name, cursor)

    def _resolve(self, slot: Slot, part: list[StoredEvent], committed: int | None = None) -> None:
        """``part`` of ``slot`` is delivered or dead-lettered: ack what the window allows."""
        cursor = self._window.resolve(slot, part)
        if cursor is not None and cursor != committed:
            self._buffer.ack(self.name, cursor)
        self.status.pending = max(0, self.status.pending - len(part))
        oldest = self._window.oldest_unresolved() or self._reader.next_accepted()
        self.status.oldest_pending_at = oldest.received_at if oldest else None

    def _throttled(self, seconds: float) -> None:
        self.status.throttled_seconds += seconds
        self._metrics.delivery_throttled.labels(self.name).inc(seconds)

    async def _deliver_in_parts(self, slot: Slot, batch: list[StoredEvent], built: Payload) -> None:
        """Deliver ``batch`` (built once already), bisecting refused parts; until done or stop."""
        parts = [batch]
        while parts:
            part = parts.pop()
            oldest = self._window.oldest_unresolved()
            self.status.oldest_pending_at = oldest.received_at if oldest else None
            outcome = await self._deliver(slot, part, built if part is batch else None)
            if outcome is None:
                return  # stopping while still failing: the events stay pending
            if outcome == "split":
                half = len(part) // 2
                parts += [part[half:], part[:half]]
            elif outcome == "delivered":
                self._resolve(slot, part)

    async def _wait_turn(self, events: int) -> bool | None:
        """Wait out a ``Retry-After`` and the rate limits; None if stopped, True if waited."""
        waited = False
        while (hold := self._hold_until - time.monotonic()) > 0:
            waited = True
            if await self._wait_or_stop(hold):
                return None
        if self._rate.limited:
            before = self._rate.throttled_seconds
            if not await self._rate.acquire(events, self._wait_or_stop):
                return None
            waited = waited or self._rate.throttled_seconds > before
        return waited

    def _adapt(self, rtt: float | None, back_pressure: bool) -> None:
        self.concurrency.observe(rtt, back_pressure)
        self._limit_gauge.set(self.concurrency.limit)

    async def _deliver(
        self, slot: Slot, batch: list[StoredEvent], first: Payload | None
    ) -> Outcome | None:
        """Send until delivered, dead-lettered or to be split; None if stopped first.

        ``first`` is the payload already built for this batch (by ``fit``);
        every retry, and a first attempt that had to wait, is rebuilt so a
        webhook's signature timestamp is fresh.
        """
        retry = self.spec.retry
        attempt = 0
        while True:
            attempt += 1
            waited = await self._wait_turn(len(batch))
            if waited is None:
                return None
            self.status.last_attempt_at = self._clock()
            if attempt == 1 and first is not None and not waited:
                payload = first
            else:
                payload = self.destination.build(batch, self.status.last_attempt_at)
            started = time.monotonic()
            self._sending += 1
            self._sending_gauge.set(self._sending)
            try:
                response = await self.destination.send(payload)
            except RetryableDeliveryError as exc:
                self._adapt(None, back_pressure=True)
                age = self._clock() - batch[0].received_at
                exhausted = (retry.max_attempts is not None and attempt >= retry.max_attempts) or (
                    retry.max_age_seconds is not None and age >= retry.max_age_seconds
                )
                outcome = "dead_letter" if exhausted else "retry"
                self._outcomes.failure(exc, attempt, outcome)
                self._outcomes.attempt(batch, attempt, outcome, exc, started)
                if exhausted:
                    reason = f"gave up after {attempt} attempt(s): {exc.message}"
                    return await self._dead_letter(slot, batch, exc, reason)
                if exc.retry_after is not None:
                    hold = min(exc.retry_after, retry.max_backoff_seconds)
                    self._hold_until = max(self._hold_until, time.monotonic() + hold)
                delay = self._backoff.delay(attempt, exc.retry_after)
                if await self._wait_or_stop(delay):
                    return None
                continue
            except PermanentDeliveryError as exc:
                self._adapt(None, back_pressure=False)
                if isinstance(exc, RejectedContentError) and len(batch) > 1:
                    self._outcomes.failure(exc, attempt, "retry")
                    self._outcomes.attempt(batch, attempt, "retry", exc, started)
                    log.info("batch_split", forwarder=self.name, status=exc.code, events=len(batch))
                    return "split"
                self._outcomes.failure(exc, attempt, "dead_letter")
                self._outcomes.attempt(batch, attempt, "dead_letter", exc, started)
                return await self._dead_letter(slot, batch, exc, exc.message)
            finally:
                self._sending -= 1
                self._sending_gauge.set(self._sending)
            self._adapt(time.monotonic() - started, back_pressure=False)
            self._outcomes.success(batch, response)
            self._outcomes.attempt(batch, attempt, "success", response, started)
            return "delivered"

    async def _wait_or_stop(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _dead_letter(
        self, slot: Slot, batch: list[StoredEvent], exc: DeliveryError, reason: str
    ) -> Outcome | None:
        """Dead-letter ``batch`` (retrying the write with backoff); None if stopped first.

        The cursor moves in the dead letter's own transaction only as far as
        the window allows: past ``batch`` only if everything before it is
        resolved too.
        """
        moved = self._window.cursor_if_resolved(slot, batch)
        ack = self._window.cursor if moved is None else moved
        recorded = await self._outcomes.dead_letter(
            batch,
            exc,
            reason,
            lambda failures: self._wait_or_stop(self._backoff.delay(failures)),
            ack,
        )
        if not recorded:
            return None
        self._resolve(slot, batch, committed=ack)
        return "dead_lettered"
