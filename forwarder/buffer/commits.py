"""What goes through the buffer's writer: the queued operations, and what a commit reports.

Every write is one of three operations (an append, statements with cursor
acks, a registration of forwarders), queued to the single writer task and
committed in groups; a :class:`Group` collects one transaction's operations
and what they will change once committed, so that nothing in memory moves
before the commit does. :class:`AppendSummary` is what listeners (the
delivery workers, across the process boundary too) learn of each commit.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from forwarder.buffer.batches import EventRecord
from forwarder.buffer.cleanup import Planned


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What happened to one append: events accepted, and how many were duplicates."""

    accepted: int
    duplicates: int


@dataclass(slots=True)
class Append:
    """Store ``records`` (and run ``statements`` in the same transaction)."""

    records: Sequence[EventRecord]
    future: asyncio.Future[AppendResult]
    statements: list[tuple[str, Sequence[Sequence[Any]]]] = field(default_factory=list)


@dataclass(slots=True)
class Statements:
    """Run ``statements`` and advance cursors; ``future`` None when nobody waits."""

    statements: list[tuple[str, Sequence[Sequence[Any]]]]
    acks: dict[str, int]
    future: asyncio.Future[None] | None


@dataclass(slots=True)
class Register:
    """Make ``names`` the set of forwarders."""

    names: list[str]
    future: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class AppendSummary:
    """What one commit appended, for listeners: enough to keep pending counts exact.

    Counts are by event type (a forwarder's filter decides per type);
    ``replays`` are rows meant for one forwarder only. Small enough to send to
    the delivery process with every commit.
    """

    last_seq: int
    first_received_at: float
    by_type: dict[str | None, int]
    replays: dict[str, dict[str | None, int]]

    @classmethod
    def of(cls, parts: Sequence[Part], received_at: float) -> AppendSummary:
        """Summarise the batches of one commit (in seq order)."""
        by_type: Counter[str | None] = Counter()
        replays: dict[str, Counter[str | None]] = {}
        for part in parts:
            only_forwarder = part.records[0].only_forwarder
            counts = (
                by_type if only_forwarder is None else replays.setdefault(only_forwarder, Counter())
            )
            counts.update([record.event_type for record in part.records])
        last = parts[-1]
        return cls(
            last.first_seq + len(last.records) - 1,
            received_at,
            dict(by_type),
            {name: dict(counts) for name, counts in replays.items()},
        )

    def to_message(self) -> dict[str, Any]:
        """JSON-safe form (event types may be null, so counts are pairs)."""
        return {
            "last_seq": self.last_seq,
            "first_received_at": self.first_received_at,
            "by_type": list(self.by_type.items()),
            "replays": {name: list(counts.items()) for name, counts in self.replays.items()},
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> AppendSummary:
        """The inverse of :meth:`to_message`."""
        return cls(
            int(message["last_seq"]),
            float(message["first_received_at"]),
            {kind: int(n) for kind, n in message["by_type"]},
            {
                name: {kind: int(n) for kind, n in counts}
                for name, counts in message["replays"].items()
            },
        )


class Part(NamedTuple):
    """One batch of a commit: its records and the seq of the first."""

    first_seq: int
    records: Sequence[EventRecord]


Op = Append | Statements | Register
AppendListener = Callable[[AppendSummary], None]


@dataclass
class Group:
    """The ops of one transaction and what they will change once committed."""

    ops: list[Op]
    parts: list[Part] = field(default_factory=list)
    received_at: float = 0.0
    results: list[AppendResult] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)
    registered: dict[str, int] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    cleanup: Planned = field(default_factory=Planned)

    def fail(self, error: BaseException) -> None:
        """Fail every waiting operation of a group that did not commit."""
        for op in self.ops:
            future = op.future
            if future is not None and not future.done():
                future.set_exception(error)

    def resolve(self) -> None:
        """Answer every waiting operation of a committed group (appends with their result)."""
        results = iter(self.results)
        # A caller cancelled while waiting (client gone, drain timeout) has
        # cancelled its future; resolving that would kill the writer task.
        for op in self.ops:
            if isinstance(op, Append):
                result = next(results)
                if not op.future.done():
                    op.future.set_result(result)
            elif op.future is not None and not op.future.done():
                op.future.set_result(None)
