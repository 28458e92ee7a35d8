"""The batches a forwarder has sent and not yet resolved, and how far its cursor may go.

With several requests in flight, batches resolve (are delivered or
dead-lettered) in any order, but the cursor is one number: "everything up to
here is done". So the cursor advances only over the *contiguous prefix* of
resolved batches, in the order they were formed. A batch delivered while an
earlier one is still being retried is remembered as resolved and the cursor
jumps over both once the earlier one resolves. A crash then re-sends the
later batch (it was never acknowledged): at least once, never a skip.

A batch that is being bisected resolves part by part, first half first;
while it is the oldest unresolved batch, the cursor follows its resolved
parts, exactly as one request at a time always did. Events the forwarder's
filter refuses between batches become a range that is resolved from the
start, so they are acknowledged with the batches around them and never hold
the cursor back on their own.

Pure bookkeeping: no I/O, no awaiting; the worker acknowledges what this
returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from forwarder.buffer.batches import StoredEvent


@dataclass(eq=False)
class Slot:
    """One batch in the window: the seqs it covers and how much of it is resolved."""

    upto: int  # the highest seq the batch covers (refused events before it included)
    events: list[StoredEvent] = field(default_factory=list)
    resolved: int = 0  # how many of ``events`` are resolved, from the first
    progress: int = 0  # the highest seq resolved (its last resolved part's end)

    @property
    def done(self) -> bool:
        """Whether every event of the batch is delivered or dead-lettered."""
        return self.progress >= self.upto

    def first_unresolved(self) -> StoredEvent | None:
        """The oldest event of the batch still waiting, if any."""
        return self.events[self.resolved] if self.resolved < len(self.events) else None


class Window:
    """Sent, unresolved batches in the order they were formed, and the cursor they allow."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor  # the highest seq that may be acknowledged
        self._slots: deque[Slot] = deque()

    def __len__(self) -> int:
        """Slots not yet passed by the cursor (unresolved ones, and resolved ones behind them)."""
        return len(self._slots)

    def open(self, events: list[StoredEvent], upto: int) -> Slot:
        """Add a batch covering seqs up to ``upto``; its ``events`` are sent from now on."""
        slot = Slot(upto, events, progress=self.cursor)
        self._slots.append(slot)
        return slot

    def skip(self, upto: int) -> int | None:
        """Seqs up to ``upto`` hold only refused events: resolved at once; the new cursor."""
        if upto <= self._last_upto():
            return None
        self._slots.append(Slot(upto, progress=upto))
        return self._advance()

    def resolve(self, slot: Slot, part: list[StoredEvent]) -> int | None:
        """``part``, the next unresolved events of ``slot``, is done; the new cursor if it moved."""
        slot.resolved += len(part)
        slot.progress = slot.upto if slot.resolved >= len(slot.events) else part[-1].seq
        return self._advance()

    def cursor_if_resolved(self, slot: Slot, part: list[StoredEvent]) -> int | None:
        """The cursor :meth:`resolve` would give for ``part``, without resolving it.

        A dead letter is written with its acknowledgement in one transaction;
        this is that acknowledgement (None when the cursor would not move).
        """
        cursor = self.cursor
        for other in self._slots:
            if other is slot:
                whole = slot.resolved + len(part) >= len(slot.events)
                cursor = max(cursor, slot.upto if whole else part[-1].seq)
                if not whole:
                    break
            elif other.done:
                cursor = max(cursor, other.upto)
            else:
                cursor = max(cursor, other.progress)
                break
        return cursor if cursor > self.cursor else None

    def oldest_unresolved(self) -> StoredEvent | None:
        """The oldest event of the window that is neither delivered nor dead-lettered."""
        for slot in self._slots:
            event = slot.first_unresolved()
            if event is not None:
                return event
        return None

    def _last_upto(self) -> int:
        return self._slots[-1].upto if self._slots else self.cursor

    def _advance(self) -> int | None:
        cursor = self.cursor
        slots = self._slots
        while slots and slots[0].done:
            cursor = max(cursor, slots.popleft().upto)
        if slots:
            cursor = max(cursor, slots[0].progress)
        if cursor > self.cursor:
            self.cursor = cursor
            return cursor
        return None
