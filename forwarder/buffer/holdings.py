"""What the buffer holds, in bytes: the figure ``buffer.maxBytes`` is compared with.

Why not the file's size: the WAL grows to its checkpoint size (16 MiB) and
keeps that size on disk, free pages stay in the file until a vacuum hands
them back, and a checkpoint starved by the delivery process's reads lets the
WAL grow further. Compared with a limit, the file's size refused ingest while
almost nothing was pending, and after a backlog drained it could keep
refusing for good. So the limit is compared with what is actually held, and
that is counted, never stat'ed, so ingest can ask on every request:

* **Pending events:** the bytes of the ``batches`` rows that some enabled
  forwarder has not yet passed (seq above the smallest cursor). Kept in
  memory as spans of consecutive commits (``[last_seq, bytes]``, each grown
  to about ``SPAN_BYTES``) that are dropped once the cursors' floor passes
  their end; delivered rows waiting for the once-a-second purge no longer
  count. A span partly delivered counts whole, so the figure errs by at
  most a span and one commit, upwards. At open, what lies beyond the floor
  is summed by primary-key range queries (``length()`` of a blob reads no
  overflow page) into at most ``LOAD_SPANS`` spans, so a backlog found at
  start is released as it drains, not only at its end. A disabled
  forwarder's cursor follows the head, so it holds nothing.
* **Dead letters and delivery history:** these rows are written and deleted
  by statements of the delivery process and the housekeeper, through the
  writer connection. TEMP triggers on that connection (created at open, not
  part of the file's schema) call back into Python with each row's size, so
  every insert and delete is counted exactly without a scan. Their counts
  are folded in only after the transaction commits: a rolled-back group
  leaves no trace, as with everything else the writer keeps in memory.

**History gives way to events.** The delivery history is capped by rows
(``historyMaxRows``) and age, not by bytes: a healthy daemon with a small
``maxBytes`` would fill it with history alone and then refuse ingest for
good with nothing pending. So ingest is refused only when events (pending
and dead-lettered) fill the limit; when history is what makes the total
reach it, the writer deletes the oldest attempts (as many as it takes, up
to ``HISTORY_YIELD_ROWS`` per commit) until the total is back under
``HISTORY_YIELD_TO`` of the limit or no history is left (logged as
``buffer_history_trimmed``, at most once a minute at info). Events,
acknowledged as they are, are never dropped.

A row's size is the length of its text and blob values (ids, types, bodies,
response bodies, error texts); SQLite's page and index overhead, the dedup
ids kept for an hour, free pages and the WAL are not counted. A full disk
still refuses ingest by itself (``SQLITE_FULL`` → ``buffer_full``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from pathlib import Path

import aiosqlite

from forwarder.buffer.batches import ROW_BYTES
from forwarder.logs import get_logger

log = get_logger("buffer")

# Spans of pending event bytes grow to this before a new one starts: a
# backlog of 500 MB is ~8,000 spans in memory, and the figure errs by ~64 KiB.
SPAN_BYTES = 64 * 1024
# Spans a backlog found at open is cut into: it errs by 1/LOAD_SPANS of it at most.
LOAD_SPANS = 4096
# History deleted per commit when it must give way, and the share of the limit
# the total is brought back under (not just under it: no trim per request).
HISTORY_YIELD_ROWS = 2000
HISTORY_YIELD_TO = 0.9
TRIM_LOG_SECONDS = 60.0
# Parameters: bytes to free, most rows. Deletes the oldest attempts up to the
# first whose running size reaches the bytes (or the whole chunk).
_TRIM_HISTORY = (
    "DELETE FROM delivery_attempts WHERE id <= ("
    " SELECT coalesce(min(CASE WHEN running >= ? THEN id END), max(id)) FROM ("
    "  SELECT id, sum({size}) OVER (ORDER BY id) AS running FROM ("
    "   SELECT * FROM delivery_attempts ORDER BY id LIMIT ?) AS oldest))"
)
TABLES = ("dead_letters", "delivery_attempts")
# The size of a row of each table counted against buffer.maxBytes; {row} is NEW or OLD.
TABLE_ROW_BYTES = {
    "dead_letters": (
        "length({row}.forwarder) + length({row}.event_id) + coalesce(length({row}.event_type), 0)"
        " + length({row}.code) + length({row}.reason) + coalesce(length({row}.response_body), 0)"
        " + length({row}.body)"
    ),
    "delivery_attempts": (
        "length({row}.forwarder) + length({row}.event_ids) + length({row}.outcome)"
        " + length({row}.code) + coalesce(length({row}.error), 0)"
        " + coalesce(length({row}.response_body), 0)"
    ),
}
_CHANGED = "buffer_held_bytes_changed"
# Parameters: floor + 1 twice. Where the batch holding floor + 1 starts.
_FIRST_PENDING = "SELECT coalesce(max(first_seq), ?) FROM batches WHERE first_seq <= ?"
# Parameters: a range of first seqs (after, upto], floor. What its rows above the floor hold.
# A primary-key range each: a GROUP BY over the whole backlog sorted it, 4x slower.
_SPAN = (
    f"SELECT max(last_seq), sum({ROW_BYTES}) FROM batches"
    " WHERE first_seq > ? AND first_seq <= ? AND last_seq > ?"
)


def _triggers(table: str) -> list[str]:
    """TEMP triggers reporting each inserted, updated or deleted row's size of ``table``."""
    new, old = (TABLE_ROW_BYTES[table].format(row=row) for row in ("NEW", "OLD"))
    trigger = f"CREATE TEMP TRIGGER IF NOT EXISTS held_{table}"
    changed = f"BEGIN SELECT {_CHANGED}('{table}',"
    return [
        f"{trigger}_insert AFTER INSERT ON main.{table} {changed} {new}); END",
        f"{trigger}_update AFTER UPDATE ON main.{table} {changed} ({new}) - ({old})); END",
        f"{trigger}_delete AFTER DELETE ON main.{table} {changed} -({old})); END",
    ]


def _pending_spans(path: Path, floor: int, head: int) -> list[list[int]]:
    """The spans of what lies above ``floor``, in order (on a plain connection, in a thread:
    thousands of short queries, which one thread hop each would make several times slower)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA query_only = 1")
        (first,) = conn.execute(_FIRST_PENDING, (floor + 1, floor + 1)).fetchone()
        after = int(first) - 1
        width = max(1, -(-(head - after) // LOAD_SPANS))
        spans = []
        for start in range(after, head, width):
            last_seq, size = conn.execute(_SPAN, (start, start + width, floor)).fetchone()
            if last_seq is not None:
                spans.append([int(last_seq), int(size)])
        return spans
    finally:
        conn.close()


class Holdings:
    """Bytes held by the buffer, by kind. Constructing it does no I/O; :meth:`load` at open."""

    def __init__(self) -> None:
        self._spans: deque[list[int]] = deque()  # [last_seq, bytes], ascending
        self._pending_events = 0
        self._tables = dict.fromkeys(TABLES, 0)
        # Reported by the triggers in the open transaction; folded in by commit().
        self._uncommitted = dict.fromkeys(TABLES, 0)
        self._yield_to: int | None = None  # history is trimmed until the total is under it
        self._trim_logged_at = -TRIM_LOG_SECONDS

    async def load(self, conn: aiosqlite.Connection, path: Path, floor: int, head: int) -> None:
        """Count what the file at ``path`` holds and install the triggers on the writer ``conn``.

        ``floor`` is the smallest cursor, ``head`` the highest seq committed.
        """
        spans = await asyncio.to_thread(_pending_spans, path, floor, head)
        self._spans = deque(spans)
        self._pending_events = sum(size for _, size in spans)
        for table in TABLES:
            expression = TABLE_ROW_BYTES[table].format(row=table)
            rows = await conn.execute_fetchall(f"SELECT sum({expression}) FROM {table}")
            self._tables[table] = int(next(iter(rows))[0] or 0)
        await conn.create_function(_CHANGED, 2, self._changed)
        for table in TABLES:
            for statement in _triggers(table):
                await conn.execute(statement)

    def _changed(self, table: str, size: int | None) -> None:
        """Called by the triggers, on the writer connection's thread, inside its transaction."""
        self._uncommitted[table] += size or 0

    # -- the writer's transaction ----------------------------------------------------

    def begin(self) -> None:
        """A transaction starts: forget what a rolled-back one reported."""
        for table in TABLES:
            self._uncommitted[table] = 0

    async def make_room(self, conn: aiosqlite.Connection) -> None:
        """In the transaction: delete the oldest history if it is giving way to events."""
        if self._yield_to is not None:
            size = TABLE_ROW_BYTES["delivery_attempts"].format(row="oldest")
            excess = self.total - self._yield_to
            await conn.execute(_TRIM_HISTORY.format(size=size), (excess, HISTORY_YIELD_ROWS))

    def commit(self) -> bool:
        """The transaction committed: what its triggers reported is now held (or released).

        Returns whether history must still give way (another commit is wanted).
        """
        for table in TABLES:
            self._tables[table] += self._uncommitted[table]
            self._uncommitted[table] = 0
        if self._yield_to is None:
            return False
        history = self._tables["delivery_attempts"]
        if self.total > self._yield_to and history > 0:
            return True
        now = time.monotonic()
        # A limit that history keeps reaching would otherwise log every few seconds.
        loud = now - self._trim_logged_at >= TRIM_LOG_SECONDS
        if loud:
            self._trim_logged_at = now
        (log.info if loud else log.debug)(
            "buffer_history_trimmed",
            reason="buffer.maxBytes reached",
            held_bytes=self.total,
            history_bytes=history,
        )
        self._yield_to = None
        return False

    # -- pending events ----------------------------------------------------------------

    def appended(self, last_seq: int, size: int) -> None:
        """A commit stored ``size`` bytes of events, up to ``last_seq``."""
        if size <= 0:
            return
        self._pending_events += size
        if self._spans and self._spans[-1][1] < SPAN_BYTES:
            self._spans[-1][0] = last_seq
            self._spans[-1][1] += size
        else:
            self._spans.append([last_seq, size])

    def delivered(self, floor: int) -> None:
        """Every forwarder has passed ``floor``: the spans ending at or below it are released."""
        spans = self._spans
        while spans and spans[0][0] <= floor:
            self._pending_events -= spans.popleft()[1]

    # -- ingest's question ---------------------------------------------------------------

    def refuses(self, limit: int) -> tuple[bool, bool]:
        """Whether ingest must wait at ``limit``, and whether history has just begun to yield.

        Refused only when events (pending and dead-lettered) alone fill the
        limit; history in the way starts giving way instead (the caller then
        wakes the writer).
        """
        total = self.total
        if total < limit:
            return False, False
        if total - self._tables["delivery_attempts"] >= limit:
            return True, False
        if self._yield_to is not None:
            return False, False
        self._yield_to = int(limit * HISTORY_YIELD_TO)
        return False, True

    # -- reading -------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Bytes held: pending events, dead letters and delivery history."""
        return (
            self._pending_events + self._tables["dead_letters"] + self._tables["delivery_attempts"]
        )

    def by_kind(self) -> dict[str, int]:
        """The total split into ``pending_events``, ``dead_letters`` and ``history``."""
        return {
            "pending_events": self._pending_events,
            "dead_letters": self._tables["dead_letters"],
            "history": self._tables["delivery_attempts"],
        }
