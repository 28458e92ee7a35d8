"""What each delivery attempt leaves behind: history, metrics, status, logs, dead letters.

The worker decides (send again, split, give up); this module records the
decision everywhere an operator looks, in one place, so the history row, the
metric, the status the admin API shows and the log line can never disagree.
History rows are queued with the next group commit and not awaited (losing
one in a crash loses a record of an attempt, never an event); a dead letter
is awaited, with the cursor ack in the same transaction, because the events
must never leave the queue unrecorded.

Receivers echo credentials (a 401 body quoting the ``Authorization`` header,
an error message quoting the URL and its ``?token=``), and what is written
here is shown later by the admin API and the CLI. So the response body, the
error message and the dead-letter reason are masked (every wire form of
every configured secret, see :mod:`forwarder.secrets`) *before* they reach
the buffer: nothing unmasked is ever stored, so nothing reading the buffer
has to remember to mask. The events themselves are stored as received: they
are what a replay sends.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client

from forwarder.buffer.batches import StoredEvent
from forwarder.buffer.dead_letters import INSERT_DEAD_LETTER
from forwarder.buffer.history import INSERT_ATTEMPT, pack_event_ids
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.destinations.adapter import ANSWER_BODY_LIMIT as RESPONSE_BODY_LIMIT
from forwarder.destinations.adapter import Answer
from forwarder.errors import BufferUnavailableError, DeliveryError
from forwarder.logs import get_logger
from forwarder.metrics import Metrics
from forwarder.secrets import SecretMasker, masker

log = get_logger("delivery")


@dataclass
class ForwarderStatus:
    """The live state of one forwarder, as metrics and the admin API show it."""

    name: str
    pending: int = 0
    oldest_pending_at: float | None = None
    last_attempt_at: float | None = None
    last_status: str | None = None
    last_error: str | None = None  # the last failed attempt's message, masked
    last_success_at: float | None = None
    consecutive_failures: int = 0
    dead_lettered: int = 0
    throttled_seconds: float = 0.0  # waited for the rate limits, since the start


class Outcomes:
    """Records the attempts and outcomes of one forwarder."""

    def __init__(
        self,
        name: str,
        status: ForwarderStatus,
        buffer: DeliveryBuffer,
        metrics: Metrics,
        clock: Callable[[], float],
        *,
        secret_masker: SecretMasker | None = None,
    ) -> None:
        self.name = name
        self._masker = masker if secret_masker is None else secret_masker
        self.status = status
        self._buffer = buffer
        self._metrics = metrics
        self._clock = clock
        # Series are never removed: each is looked up once, not on every request
        # (a ``labels()`` call hashes and checks its label values every time).
        self._duration = metrics.delivery_duration.labels(name)
        self._delivered = metrics.events_delivered.labels(name)
        self._last_success = metrics.last_success.labels(name)
        self._attempts: dict[tuple[str, str], prometheus_client.Counter] = {}

    def attempt(
        self,
        batch: list[StoredEvent],
        attempt: int,
        outcome: str,
        result: Answer | DeliveryError,
        started: float,
    ) -> None:
        """Add the attempt to the history (committed with the next group) and the histogram."""
        elapsed = time.monotonic() - started
        status: int | None
        error: str | None
        if isinstance(result, DeliveryError):
            code, status, error, body = result.code, result.status, result.message, result.body
        else:
            code, status, error, body = result.code, result.status, None, result.body
        row = (
            self.name,
            self.status.last_attempt_at,
            attempt,
            len(batch),
            pack_event_ids([e.event_id for e in batch]),
            outcome,
            code,
            status,
            round(elapsed * 1000, 3),
            None if error is None else self._masker.mask(error),
            self._masker.mask_bytes(body, RESPONSE_BODY_LIMIT),
        )
        self._buffer.submit([(INSERT_ATTEMPT, [row])])
        self._duration.observe(elapsed)

    def _attempts_series(self, outcome: str, code: str) -> prometheus_client.Counter:
        """The ``delivery_attempts`` series of this forwarder for ``outcome`` and ``code``."""
        series = self._attempts.get((outcome, code))
        if series is None:
            series = self._metrics.delivery_attempts.labels(self.name, outcome, code)
            self._attempts[(outcome, code)] = series
        return series

    def success(self, batch: list[StoredEvent], response: Answer) -> None:
        now = self._clock()
        m = self._metrics
        self._attempts_series("success", response.code).inc()
        self._delivered.inc(len(batch))
        self._last_success.set(now)
        # Events committed together share their arrival time: one observation each
        # (and most requests carry the events of a single commit).
        if batch[0].received_at == batch[-1].received_at:
            arrivals = {batch[0].received_at: len(batch)}
        else:
            arrivals = Counter(e.received_at for e in batch)
        for received_at, count in arrivals.items():
            m.ingest_to_delivery.observe(self.name, max(0.0, now - received_at), count)
        if self.status.consecutive_failures:
            log.info(
                "forwarder_recovered",
                forwarder=self.name,
                status=response.code,
                failures=self.status.consecutive_failures,
            )
        self.status.consecutive_failures = 0
        self.status.last_error = None
        self.status.last_status = response.code
        self.status.last_success_at = now

    def failure(self, exc: DeliveryError, attempt: int, outcome: str) -> None:
        self._attempts_series(outcome, exc.code).inc()
        self.status.last_status = exc.code
        self.status.last_error = self._masker.mask(exc.message)
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

    async def dead_letter(
        self,
        batch: list[StoredEvent],
        exc: DeliveryError,
        reason: str,
        pause: Callable[[int], Awaitable[bool]],
        ack: int | None = None,
    ) -> bool:
        """Move ``batch`` to the dead-letter table; False if stopped before it was recorded.

        ``pause(failures)`` waits before another try of the write and returns
        True when the worker is stopping instead. ``ack`` is the cursor the
        same transaction commits: by default the batch's last seq (one request
        at a time); with several in flight, no further than the resolved
        prefix allows (a cursor never moves back, so a lower one is a no-op).
        """
        now = self._clock()
        reason = self._masker.mask(reason)
        response_body = self._masker.mask_bytes(exc.body, RESPONSE_BODY_LIMIT)
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
                reason,
                response_body,
                e.body,
            )
            for e in batch
        ]
        failures = 0
        while True:
            try:
                await self._buffer.execute(
                    [(INSERT_DEAD_LETTER, rows)],
                    acks={self.name: batch[-1].seq if ack is None else ack},
                )
                break
            except BufferUnavailableError as exc_buffer:
                # The events must not leave the queue unrecorded: wait and try again.
                failures += 1
                log.error("dead_letter_write_failed", forwarder=self.name, error=exc_buffer.reason)
                if await pause(failures):
                    return False
        self._metrics.events_dead_lettered.labels(self.name).inc(len(batch))
        self.status.dead_lettered += len(batch)
        log.error(
            "events_dead_lettered",
            forwarder=self.name,
            status=exc.code,
            events=len(batch),
            first_event_id=batch[0].event_id,
            reason=reason,
        )
        return True
