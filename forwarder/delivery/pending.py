"""How many events a forwarder still owes, kept in memory so a scrape never scans the buffer.

Counted once at start with one query over the batches past the cursor, then
kept up to date from the buffer's commit summaries (which carry counts by
event type) and from the worker's own acks. The two must never count an
event twice or miss one: the listener is registered *before* the count runs
and the count stops at a fixed head, so a commit is either wholly counted at
start or wholly new. Nor may the worker resolve an event before its commit
is counted (it would take off what was never added, and the count is kept
at 0 or above): a buffer's ``read_after`` returns only events its listeners
have been told of, stopping at ``head_seq`` even when SQLite already shows
more (``batches.up_to_head``), so the order in which a commit's summary and
a read of its rows arrive cannot skew the count. Events the forwarder's filter
refuses never count.
"""

from __future__ import annotations

from forwarder.buffer import batches
from forwarder.buffer.commits import AppendSummary
from forwarder.delivery.filters import EventFilter
from forwarder.delivery.outcomes import ForwarderStatus
from forwarder.delivery.ports import DeliveryBuffer


class PendingCount:
    """Keeps ``status.pending`` and ``status.oldest_pending_at`` of one forwarder."""

    def __init__(self, name: str, event_filter: EventFilter, status: ForwarderStatus) -> None:
        self._name = name
        self._filter = event_filter
        self._status = status
        self._counted_upto = 0

    async def start(self, buffer: DeliveryBuffer, cursor: int) -> None:
        """Listen to commits, then count what lies between ``cursor`` and the head."""
        self._counted_upto = buffer.head_seq
        buffer.add_listener(self.on_append)
        rows = await buffer.query(
            batches.PENDING, (cursor + 1, self._counted_upto, cursor, self._name)
        )
        counts = batches.pending_counts(rows, cursor, self._counted_upto)
        for event_type, (count, oldest) in counts.items():
            if self._filter.accepts(event_type):
                self._status.pending += count
                current = self._status.oldest_pending_at
                self._status.oldest_pending_at = oldest if current is None else min(current, oldest)

    def stop(self, buffer: DeliveryBuffer) -> None:
        """Stop following commits (safe when never started)."""
        buffer.remove_listener(self.on_append)

    def on_append(self, summary: AppendSummary) -> None:
        """Count a commit's events this forwarder takes (replays only for their forwarder)."""
        if summary.last_seq <= self._counted_upto:
            return
        accepts = self._filter.accepts
        added = sum(n for kind, n in summary.by_type.items() if accepts(kind))
        for kind, n in summary.replays.get(self._name, {}).items():
            if accepts(kind):
                added += n
        if added:
            self._status.pending += added
            if self._status.oldest_pending_at is None:
                self._status.oldest_pending_at = summary.first_received_at
