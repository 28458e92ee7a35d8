"""How events are laid out on disk: one ``batches`` row per commit, not one row per event.

Why: with a row per event, SQLite's per-row work (the insert's B-tree step,
the read's row decode, the purge's delete) was the largest single cost of
the whole pipeline, about 4 µs an event in the writer alone. A commit's
events are instead written as one row:

* ``bodies`` is the events' bytes concatenated, ``lengths`` a JSON array of
  their sizes, so a reader slices events out without parsing them (with
  encryption at rest, ``bodies`` is sealed as one value: one AES-GCM
  operation per batch, see ``forwarder.buffer.encryption``);
* ``event_types`` is run-length encoded (``[[type, count], ...]``): a batch
  of one kind of event costs a few bytes, and filters still decide per event;
* ``event_ids`` holds the ids that must be kept (client-supplied, or carried
  by a dead-letter replay) and is NULL when every id is generated: generated
  ids are a function of the buffer's instance number and the seq, so they are
  never stored;
* the seqs of a batch are ``first_seq..last_seq`` with no gap (the single
  writer assigns them), so ``first_seq`` is the primary key and reads,
  cursors and purges stay primary-key range operations.

A forwarder's cursor may point inside a batch; a batch is deleted once every
cursor has passed its ``last_seq``. Readers decode a batch once and keep the
last few decoded (:class:`BatchReader`), so delivering a 1,000-event batch in
ten requests of 100 reads it from SQLite once.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from forwarder.buffer.encryption import NO_KEYS, Keyring, batch_context

if TYPE_CHECKING:
    from forwarder.integrity.records import ChainRecord

# A batch is split beyond these, so one row never makes a reader hold much.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1024 * 1024
# Bytes of decoded batches a reader keeps, beyond the latest one (forwarders at
# nearby positions share them; one further behind reads its batch again).
CACHED_BYTES = 4 * 1024 * 1024
CACHED_BATCHES = 256
# Batches one read fetches at most: many when they are small (single-event commits).
BATCHES_PER_READ = 64
NO_SEQ_BOUND = 2**62

COLUMNS = (
    "first_seq, last_seq, received_at, only_forwarder, event_types, event_ids, lengths, bodies"
)
INSERT = f"INSERT INTO batches ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The bytes a row holds, as counted against buffer.maxBytes (see forwarder.buffer.holdings);
# the same sum as row_bytes(). length() of a blob reads no overflow page.
ROW_BYTES = (
    "coalesce(length(only_forwarder), 0) + length(event_types) + coalesce(length(event_ids), 0)"
    " + length(lengths) + length(bodies)"
)
# The batches holding one forwarder's events in (after, upto], by primary-key
# range: from the batch containing after + 1 (the largest first_seq <= after + 1).
# Parameters: after + 1, upto, after, forwarder.
_IN_RANGE = (
    " FROM batches"
    " WHERE first_seq >= (SELECT coalesce(max(first_seq), 0) FROM batches WHERE first_seq <= ?)"
    " AND first_seq <= ? AND last_seq > ? AND (only_forwarder IS NULL OR only_forwarder = ?)"
    " ORDER BY first_seq"
)
READ = f"SELECT {COLUMNS}{_IN_RANGE} LIMIT ?"
# What is pending: types and arrival times, not bodies.
PENDING = f"SELECT first_seq, last_seq, received_at, event_types{_IN_RANGE}"


@dataclass(slots=True)
class EventRecord:
    """An event parsed by ingest, ready to be appended.

    ``event_id`` is None when the client sent none: the id is then generated
    from the event's seq (see :func:`generated_id`).
    """

    event_id: str | None
    event_type: str | None
    body: bytes
    client_supplied_id: bool
    only_forwarder: str | None = None


class StoredEvent(NamedTuple):
    """A committed event as delivery reads it.

    ``chain`` is never stored: the delivery layer sets it, for a forwarder
    with ``integrity``, to the event's chain record (forwarder.delivery.chain).
    """

    seq: int
    event_id: str
    event_type: str | None
    received_at: float
    only_forwarder: str | None
    body: bytes
    chain: ChainRecord | None = None


def id_prefix(instance: int) -> str:
    """The fixed part of the generated ids of the buffer numbered ``instance``."""
    text = f"{instance:016x}"
    return f"{text[:8]}-{text[8:12]}-8{text[13:16]}-"


def generated_id(prefix: str, seq: int) -> str:
    """The id of an event the client sent without one.

    UUID-shaped (version 8): the buffer's random instance number and the
    event's seq, so ids are unique across buffers, sort in ingest order, and
    cost a string format instead of random bytes per event.
    """
    # seq < 2**60: the top hex digit is always 0, which leaves room for the variant.
    return f"{prefix}8{seq >> 48 & 0xFFF:03x}-{seq & 0xFFFFFFFFFFFF:012x}"


def split(records: Sequence[EventRecord]) -> Iterator[Sequence[EventRecord]]:
    """Cut records (in seq order) into batches: one ``only_forwarder`` each, bounded."""
    start = 0
    size = 0
    for index, record in enumerate(records):
        if index > start and (
            record.only_forwarder != records[start].only_forwarder
            or index - start >= MAX_BATCH_EVENTS
            or size + len(record.body) > MAX_BATCH_BYTES
        ):
            yield records[start:index]
            start, size = index, 0
        size += len(record.body)
    if start < len(records):
        yield records[start:]


def type_runs(types: Sequence[str | None]) -> list[list[Any]]:
    """Run-length encoding of event types, in order."""
    return [[kind, sum(1 for _ in run)] for kind, run in itertools.groupby(types)]


def batch_row(
    first_seq: int,
    records: Sequence[EventRecord],
    received_at: float,
    keyring: Keyring = NO_KEYS,
) -> tuple[Any, ...]:
    """The ``batches`` row of ``records`` (one :func:`split` part), seqs from ``first_seq``.

    With encryption on, ``bodies`` is sealed for this seq range
    (``forwarder.buffer.encryption``); the other columns stay in clear.
    """
    ids = [record.event_id for record in records]
    last_seq = first_seq + len(records) - 1
    bodies = b"".join([record.body for record in records])
    if keyring.enabled:
        bodies = keyring.seal(bodies, batch_context(first_seq, last_seq))
    return (
        first_seq,
        last_seq,
        received_at,
        records[0].only_forwarder,
        orjson.dumps(type_runs([record.event_type for record in records])),
        orjson.dumps(ids) if any(ids) else None,
        orjson.dumps([len(record.body) for record in records]),
        bodies,
    )


def row_bytes(row: Sequence[Any]) -> int:
    """The bytes a :func:`batch_row` holds: the same sum as :data:`ROW_BYTES` in SQL."""
    _, _, _, only_forwarder, types, ids, lengths, bodies = row
    return (
        len(only_forwarder or "")
        + len(types)
        + (len(ids) if ids is not None else 0)
        + len(lengths)
        + len(bodies)
    )


def expand_runs(encoded: bytes) -> list[str | None]:
    """The per-event types of a batch's ``event_types``."""
    runs: list[list[Any]] = orjson.loads(encoded)
    repeated = (itertools.repeat(kind, count) for kind, count in runs)
    return list(itertools.chain.from_iterable(repeated))


class Batch:
    """One decoded ``batches`` row: slices out its events by seq.

    Sealed bodies are opened here, once per batch; an error naming the key
    id (``forwarder.buffer.encryption``) is raised rather than any event read
    from a batch that does not open.
    """

    __slots__ = (
        "_bodies",
        "_ids",
        "_offsets",
        "_prefix",
        "_types",
        "first_seq",
        "last_seq",
        "only_forwarder",
        "received_at",
        "size",
    )

    def __init__(self, row: Sequence[Any], prefix: str, keyring: Keyring = NO_KEYS) -> None:
        first, last, received_at, only_forwarder, types, ids, lengths, bodies = row
        self.first_seq: int = first
        self.last_seq: int = last
        self.received_at: float = received_at
        self.only_forwarder: str | None = only_forwarder
        self._types = expand_runs(types)
        self._ids: list[str | None] | None = orjson.loads(ids) if ids is not None else None
        self._offsets = [0, *itertools.accumulate(orjson.loads(lengths))]
        self._bodies: bytes = keyring.open(
            bytes(bodies), batch_context(first, last), f"the batch of events {first}..{last}"
        )
        self._prefix = prefix
        self.size = len(self._bodies)

    def holds(self, seq: int, forwarder: str) -> bool:
        """Whether ``seq`` is in this batch and the batch is meant for ``forwarder``."""
        return self.first_seq <= seq <= self.last_seq and (
            self.only_forwarder is None or self.only_forwarder == forwarder
        )

    def events(self, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with seq above ``after_seq``, in order."""
        first = self.first_seq
        start = max(after_seq + 1 - first, 0)
        stop = min(start + limit, self.last_seq - first + 1)
        types, offsets, bodies = self._types, self._offsets, self._bodies
        received_at, only_forwarder = self.received_at, self.only_forwarder
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python call per event.
        make = tuple.__new__
        return [
            make(
                StoredEvent,
                (
                    first + index,
                    event_id,
                    types[index],
                    received_at,
                    only_forwarder,
                    bodies[offsets[index] : offsets[index + 1]],
                    None,
                ),
            )
            for index, event_id in zip(
                range(start, stop), self._event_ids(start, stop), strict=True
            )
        ]

    def _event_ids(self, start: int, stop: int) -> list[str]:
        """The ids of events ``start..stop-1`` (indexes in the batch)."""
        first, prefix = self.first_seq, self._prefix
        given = self._ids[start:stop] if self._ids is not None else [None] * (stop - start)
        high = (first + start) >> 48
        if high != (first + stop) >> 48:
            return [i or generated_id(prefix, first + n) for n, i in enumerate(given, start)]
        # Within one 2**48 range only the last 12 hex digits differ: format those alone.
        base = generated_id(prefix, high << 48)[:-12]
        return [
            i or f"{base}{(first + n) & 0xFFFFFFFFFFFF:012x}" for n, i in enumerate(given, start)
        ]


Query = Callable[[str, Sequence[Any]], Awaitable[Sequence[Sequence[Any]]]]


class BatchReader:
    """Reads events by seq through ``query``, keeping recently decoded batches.

    The cache is bounded in bytes and in batches (single-event commits make
    thousands of tiny ones) and looked up by bisection on first seqs; the
    oldest batches go first, since cursors only move forward.
    """

    def __init__(self, query: Query, prefix: str, keyring: Keyring = NO_KEYS) -> None:
        self._query = query
        self._prefix = prefix
        self._keyring = keyring
        self._starts: list[int] = []  # first seqs of the cached batches, ascending
        self._cache: dict[int, Batch] = {}
        self._cached_bytes = 0

    def _cached(self, seq: int, forwarder: str) -> Batch | None:
        index = bisect.bisect_right(self._starts, seq) - 1
        if index < 0:
            return None
        batch = self._cache[self._starts[index]]
        return batch if batch.holds(seq, forwarder) else None

    def _remember(self, batch: Batch) -> None:
        if batch.first_seq in self._cache:
            return
        bisect.insort(self._starts, batch.first_seq)
        self._cache[batch.first_seq] = batch
        self._cached_bytes += batch.size

    async def _fetch(self, forwarder: str, after_seq: int, upto_seq: int) -> Batch | None:
        rows = await self._query(
            READ, (after_seq + 1, upto_seq, after_seq, forwarder, BATCHES_PER_READ)
        )
        if not rows:
            # Nothing starts by upto_seq: the next batch may lie beyond a long
            # stretch of other forwarders' replays, or not exist yet.
            rows = await self._query(READ, (after_seq + 1, NO_SEQ_BOUND, after_seq, forwarder, 1))
        # Rows already cached (small batches fetched by a read further back) are not decoded again.
        batches = [
            self._cache.get(row[0]) or Batch(row, self._prefix, self._keyring) for row in rows
        ]
        for batch in batches:
            self._remember(batch)
        self._evict(keep={batch.first_seq for batch in batches})
        return batches[0] if batches else None

    def forget(self) -> None:
        """Drop every cached batch: after a burst they only hold memory (forwarder/memory.py)."""
        self._starts.clear()
        self._cache.clear()
        self._cached_bytes = 0

    def _evict(self, keep: set[int]) -> None:
        """Drop the oldest batches beyond the bounds, except those just fetched."""
        index = 0
        while index < len(self._starts) and (
            self._cached_bytes > CACHED_BYTES or len(self._starts) > CACHED_BATCHES
        ):
            if self._starts[index] in keep:
                index += 1
                continue
            self._cached_bytes -= self._cache.pop(self._starts.pop(index)).size

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` with seq above ``after_seq``, in order.

        At most one fetch per call: a worker woken by each small commit would
        otherwise pay for a second query only to learn there is nothing more.
        Fewer than ``limit`` events does not mean there are no more.
        """
        events: list[StoredEvent] = []
        fetched = False
        while len(events) < limit:
            wanted = limit - len(events)
            batch = self._cached(after_seq + 1, forwarder)
            if batch is None:
                if fetched:
                    break
                batch = await self._fetch(forwarder, after_seq, after_seq + wanted)
                fetched = True
            if batch is None or batch.last_seq <= after_seq:
                break
            taken = batch.events(after_seq, wanted)
            events.extend(taken)
            after_seq = taken[-1].seq if taken else batch.last_seq
        return events


def pending_counts(
    rows: Sequence[Sequence[Any]], after_seq: int, upto_seq: int
) -> dict[str | None, tuple[int, float]]:
    """Per event type: how many of the :data:`PENDING` rows' events are in (after, upto],
    and the oldest arrival among them."""
    counts: dict[str | None, tuple[int, float]] = {}
    for first, last, received_at, types in rows:
        start = max(after_seq + 1, first) - first
        stop = min(upto_seq, last) - first + 1
        for kind, count in Counter(expand_runs(types)[start:stop]).items():
            total, oldest = counts.get(kind, (0, received_at))
            counts[kind] = (total + count, min(oldest, received_at))
    return counts


def up_to_head(events: list[StoredEvent], head: int) -> list[StoredEvent]:
    """``events`` (in seq order) without those above ``head``; the list itself when none are.

    Readers see a commit as soon as SQLite makes it visible, which is before
    the writer's ``COMMIT`` call returns (it runs the WAL auto-checkpoint,
    up to ~200 ms after a large commit) and so before the head moves and the
    append listeners hear of it. Delivery reads stop at the head, so a worker
    never resolves events its pending count has not added yet.
    """
    if not events or events[-1].seq <= head:
        return events
    return events[: bisect.bisect_right(events, head, key=lambda event: event.seq)]
