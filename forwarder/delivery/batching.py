"""Forming one forwarder's batches, in order, from the events after its cursor.

Events the forwarder's filter refuses are skipped; their seqs are covered by
the next batch's range, or, when only refused events came, reported through
``on_skipped`` so that they are acknowledged and never hold back the
cleanup. The rest are grouped until ``batch.maxEvents``, ``batch.maxBytes`` of
encoded body or ``batch.maxWaitMs`` is reached. Events are read ahead from
the buffer a chunk at a time (one query serves many batches), and a batch
whose encoded body turns out larger than ``maxBytes`` hands its last events
back to the read-ahead for the next one.

Split from the worker because it is a job of its own: the worker decides
when a batch may go (in-flight limit, rate limit) and what becomes of it;
this decides what is in it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from forwarder.buffer.store import StoredEvent
from forwarder.delivery.filters import EventFilter
from forwarder.delivery.ports import DeliveryBuffer
from forwarder.destinations.adapter import Destination, Payload
from forwarder.destinations.kinds import AnyForwarderConfig

READ_AHEAD = 1024


class BatchReader:
    """Reads events after a position and groups them into batches. No I/O until used."""

    def __init__(
        self,
        spec: AnyForwarderConfig,
        buffer: DeliveryBuffer,
        event_filter: EventFilter,
        destination: Destination[Any],
        stopping: asyncio.Event,
        on_skipped: Callable[[int], None],
    ) -> None:
        self.spec = spec
        self.filter = event_filter
        self.destination = destination
        self.read_ahead: deque[StoredEvent] = deque()
        self.read_upto = 0  # highest seq pulled from the buffer into read_ahead
        self.skipped_upto = 0  # highest seq the filter refused in the batch being built
        self._buffer = buffer
        self._stopping = stopping
        self._on_skipped = on_skipped

    async def wait_for_events(self, within: float | None) -> bool:
        """Wait until events beyond what was read are committed; False on stop/timeout."""
        # Rows up to head not returned were replays for other forwarders: waiting
        # beyond the read position alone would return at once and spin on them.
        waiter = asyncio.ensure_future(
            self._buffer.wait_beyond(max(self.read_upto, self._buffer.head_seq))
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

    async def _read_more(self, name: str) -> bool:
        """Pull the next events after the read position; False when there were none."""
        fetched = await self._buffer.read_after(name, self.read_upto, READ_AHEAD)
        if fetched:
            self.read_ahead.extend(fetched)
            self.read_upto = fetched[-1].seq
        return bool(fetched)

    def _take(self, batch: list[StoredEvent], budget: int) -> tuple[int, bool]:
        """Move matching events from the read-ahead into ``batch``; return (budget, full)."""
        max_events = self.spec.batch.max_events
        read_ahead = self.read_ahead  # per event: kept lean
        accepts = None if self.filter.takes_everything else self.filter.accepts
        while read_ahead:
            event = read_ahead[0]
            if accepts is not None and not accepts(event.event_type):
                read_ahead.popleft()
                self.skipped_upto = event.seq
                continue
            cost = len(event.body) + 1
            if batch and cost > budget:
                return budget, True
            batch.append(read_ahead.popleft())
            budget -= cost
            if len(batch) >= max_events:
                return budget, True
        return budget, False

    async def next_batch(self, name: str) -> list[StoredEvent] | None:
        """The next batch within the limits; None when stopping."""
        limits = self.spec.batch
        batch: list[StoredEvent] = []
        budget = limits.max_bytes
        deadline: float | None = None
        self.skipped_upto = 0
        while not self._stopping.is_set():
            budget, full = self._take(batch, budget)
            if full:
                return batch
            if await self._read_more(name):
                continue
            if self.skipped_upto and not batch:
                # Only refused events so far: acknowledge them so they can be cleaned up.
                self._on_skipped(self.skipped_upto)
            if batch and limits.max_events == 1:
                return batch
            if batch and deadline is None:
                deadline = time.monotonic() + limits.max_wait_ms / 1000
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not await self.wait_for_events(timeout) and batch:
                return batch
        return None

    def fit(self, batch: list[StoredEvent], now: float) -> Payload:
        """Build the payload, handing events back until its encoded size fits maxBytes."""
        built: Payload = self.destination.build(batch, now)
        while built.encoded_bytes > self.spec.batch.max_bytes and len(batch) > 1:
            keep = max(1, len(batch) * self.spec.batch.max_bytes // built.encoded_bytes)
            keep = min(keep, len(batch) - 1)
            self.read_ahead.extendleft(reversed(batch[keep:]))
            del batch[keep:]
            built = self.destination.build(batch, now)
        return built

    def next_accepted(self) -> StoredEvent | None:
        """The oldest event in the read-ahead that this forwarder takes."""
        return next((e for e in self.read_ahead if self.filter.accepts(e.event_type)), None)
