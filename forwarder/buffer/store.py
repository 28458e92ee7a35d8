"""The durable write-ahead buffer: SQLite in WAL mode, one writer, group commit.

Design:

* **Stored once, fanned out by cursor.** Each event has a ``seq`` (ingest
  order) and is stored once, in the ``batches`` row of the commit that took it
  (the layout is in ``forwarder.buffer.batches``). Each forwarder owns one row of
  ``forwarders`` holding its cursor: the highest ``seq`` it has delivered or
  dead-lettered. An event is pending for a forwarder while ``seq > cursor``;
  batches wholly at or below the smallest cursor are deleted in ranges by
  primary key (when, and how the space goes back: ``forwarder.buffer.cleanup``).
  N forwarders cost N cursor updates per batch, not N copies of each body,
  and a slow forwarder only delays the cleanup, never the others' delivery.
* **One writer task, group commit.** Every write is queued to a single task
  that commits what it finds in one transaction, and only then changes the
  state in memory (head, cursors, counts) and acknowledges:
  ``forwarder.buffer.writer``.
* **Reads off the writer.** Reads go to a second, read-only connection (WAL
  readers never block the writer), a batch at a time, through the same
  ``BatchReader`` the delivery process uses.
* **Duplicates.** Client-supplied ids are remembered in ``client_ids`` for
  ``dedup_window_seconds`` (beyond the event's own life in the buffer), so a
  client retrying an acknowledged request within that window is not
  delivered twice. Generated ids cannot collide and are not indexed.
* **Replays** of dead letters are new rows with ``only_forwarder`` set: they
  go through the same ordered path without rewinding anyone's cursor.
* **Backpressure** (``is_full``) compares ``buffer.maxBytes`` with what the
  buffer holds — pending events, dead letters, history — counted in memory
  as commits change it (``forwarder.buffer.holdings``), not with the file's
  size, which the WAL and free pages inflate whatever is pending.

This object holds the lifecycle, the connections and the reads, and hands
every write to the writer task. The rest lives next to it: the writer task
and its group commit (``writer``), the SQL of a commit (``writes``), opening
and resuming (``opening``), cleanup, holdings, the lock and the file watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from forwarder.buffer import batches
from forwarder.buffer.batches import BatchReader, EventRecord, StoredEvent
from forwarder.buffer.check import prepare, unusable_from_sqlite_error
from forwarder.buffer.checkpoints import Checkpointer
from forwarder.buffer.cleanup import Cleanup
from forwarder.buffer.commits import (
    Append,
    AppendListener,
    AppendResult,
    AppendSummary,
    Register,
    Statements,
)
from forwarder.buffer.encryption import NO_KEYS, Keyring
from forwarder.buffer.holdings import Holdings
from forwarder.buffer.lock import BufferLock, FileWatch
from forwarder.buffer.opening import check_keys, connect_reader, connect_writer, read_state
from forwarder.buffer.writer import GroupWriter
from forwarder.errors import BufferUnavailableError
from forwarder.logs import get_logger

__all__ = [
    "AppendListener",
    "AppendResult",
    "AppendSummary",
    "EventBuffer",
    "EventRecord",
    "StoredEvent",
]

log = get_logger("buffer")


class EventBuffer:
    """The SQLite buffer. Constructing it does no I/O; call :meth:`open`."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        dedup_window_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
        keyring: Keyring = NO_KEYS,
    ) -> None:
        self.path = path
        # Seals what the writer stores and opens what is read (forwarder.buffer.encryption).
        self.keyring = keyring
        self._synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._cleanup = Cleanup(clock, Path(f"{path}-wal"))
        self._holdings = Holdings()
        self._instance = 0
        self._id_prefix = ""
        self._batch_reader = BatchReader(self.query, "", keyring)
        # One daemon per file (lock.py); the daemon takes it before anything else.
        self.lock = BufferLock(path)
        self.file_watch = FileWatch(path)
        self._checkpointer = Checkpointer(path)
        self._cleanup.settle = self._checkpointer.settle
        # The one task that writes; it owns the committed state read below.
        self._group_writer = GroupWriter(
            cleanup=self._cleanup,
            holdings=self._holdings,
            checkpointer=self._checkpointer,
            file_watch=self.file_watch,
            keyring=keyring,
            clock=clock,
            dedup_window_seconds=dedup_window_seconds,
        )

    # -- lifecycle -------------------------------------------------------------

    async def open(self, forwarder_names: Iterable[str]) -> None:
        """Open (creating and migrating if needed) and register the forwarders.

        Takes the lock first; a file that cannot be used (locked, damaged,
        foreign, too new, unwritable, or holding pending events that the
        configured keys cannot open) raises ``BufferUnusableError``.
        """
        forwarder_names = list(forwarder_names)
        self.lock.acquire()
        previous = await asyncio.to_thread(self._migrate)
        if previous != 0:
            log.info("buffer_opened", path=str(self.path), schema_from=previous)
        try:
            self._writer = await connect_writer(self.path, self._synchronous)
            self._reader = await connect_reader(self.path)
            await self._checkpointer.open()
            await self._load_state()
            await check_keys(
                self._writer, self.path, self.keyring, self._group_writer.cursors, forwarder_names
            )
        except sqlite3.Error as exc:
            raise unusable_from_sqlite_error(self.path, exc) from None
        self.file_watch.start()
        self._group_writer.start(self._writer)
        await self.register_forwarders(forwarder_names)

    def _migrate(self) -> int:
        return prepare(self.path)

    async def _load_state(self) -> None:
        assert self._writer is not None
        state = await read_state(self._writer)
        self._group_writer.load(state.head_seq, state.cursors, state.event_count)
        self._cleanup.load(state.purged_upto, state.page_size)
        self._instance = state.instance
        self._id_prefix = batches.id_prefix(self._instance)
        self._batch_reader = BatchReader(self.query, self._id_prefix, self.keyring)
        await self._holdings.load(
            self._writer, self.path, self._group_writer.floor(), state.head_seq
        )

    async def close(self) -> None:
        """Commit what is queued, stop the writer, checkpoint and close. Idempotent."""
        await self._group_writer.stop()
        await self._checkpointer.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._writer.close()
            self._writer = None
        self.file_watch.stop()
        self.lock.release()

    @property
    def writer_task(self) -> asyncio.Task[None] | None:
        """The writer task, for the daemon to supervise."""
        return self._group_writer.task

    # -- state read by delivery and metrics ------------------------------------

    @property
    def head_seq(self) -> int:
        """The highest committed seq."""
        return self._group_writer.head_seq

    @property
    def event_count(self) -> int:
        """Events in the buffer (kept in memory: no table scan per scrape)."""
        return self._group_writer.event_count

    def cursor(self, forwarder: str) -> int:
        """The committed cursor of ``forwarder``."""
        return self._group_writer.cursors[forwarder]

    def cursors(self) -> dict[str, int]:
        """Every committed cursor, by forwarder."""
        return dict(self._group_writer.cursors)

    def is_full(self, limit: int | None) -> bool:
        """Whether events held fill ``limit`` bytes (in memory: asked per request).

        When delivery history is what fills it, history gives way instead
        (see ``forwarder.buffer.holdings``) and this answers False.
        """
        if limit is None:
            return False
        full, make_room = self._holdings.refuses(limit)
        if make_room:
            self._group_writer.wake()
        return full

    def held_bytes(self) -> int:
        """Bytes held: events not yet passed by every forwarder, dead letters, history."""
        return self._holdings.total

    def held_bytes_by_kind(self) -> dict[str, int]:
        """:meth:`held_bytes` split into ``pending_events``, ``dead_letters``, ``history``."""
        return self._holdings.by_kind()

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL (not what ``is_full`` compares)."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener(summary)`` after every commit that appended events."""
        self._group_writer.listeners.append(listener)

    def remove_listener(self, listener: AppendListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._group_writer.listeners.remove(listener)

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        await self._group_writer.wait_beyond(seq)

    async def ping(self) -> None:
        """Run a trivial query on the read connection (health check)."""
        if self._reader is None:
            raise BufferUnavailableError("closed", "the buffer is closed")
        await self._reader.execute_fetchall("SELECT 1")

    # -- writes ----------------------------------------------------------------

    async def append(
        self,
        records: Sequence[EventRecord],
        statements: list[tuple[str, Sequence[Sequence[Any]]]] | None = None,
    ) -> AppendResult:
        """Store ``records`` atomically; return once they are committed.

        ``statements`` run in the same transaction (a dead-letter replay deletes
        the rows it re-queues, so an event is never in both places or neither).
        """
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._group_writer.submit(Append(records, future, statements or []))
        return await future

    def ack(self, forwarder: str, seq: int) -> None:
        """Advance ``forwarder``'s cursor to ``seq`` in the next group commit.

        Not awaited: an ack lost in a crash only means the batch is delivered
        again (at-least-once), and the next ack covers it.
        """
        self._group_writer.submit(Statements([], {forwarder: seq}, None))

    def submit(self, statements: list[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Queue statements for the next group commit without waiting for it.

        For records whose loss in a crash is acceptable (delivery history).
        """
        self._group_writer.submit(Statements(statements, {}, None))

    async def execute(
        self,
        statements: list[tuple[str, Sequence[Sequence[Any]]]],
        acks: dict[str, int] | None = None,
    ) -> None:
        """Run ``executemany`` statements (and cursor acks) in the next group commit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._group_writer.submit(Statements(statements, acks or {}, future))
        await future

    async def register_forwarders(self, names: Iterable[str]) -> None:
        """Make ``names`` the set of forwarders; a new one starts at the head.

        A removed forwarder's cursor is deleted, so it no longer holds back
        the cleanup of delivered events.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._group_writer.submit(Register(list(names), future))
        await future

    # -- reads -----------------------------------------------------------------

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` with seq above ``after_seq``, in order.

        None above :attr:`head_seq`: the listeners have heard of every event
        returned (see :func:`~forwarder.buffer.batches.up_to_head`).
        """
        if after_seq >= self._group_writer.head_seq:
            return []
        events = await self._batch_reader.read_after(forwarder, after_seq, limit)
        # The head as it is now: commits may have landed during the read.
        return batches.up_to_head(events, self._group_writer.head_seq)

    async def release_memory(self) -> None:
        """Drop what only speeds reads up: decoded batches, SQLite's page caches (memory.py)."""
        self._batch_reader.forget()
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.execute("PRAGMA shrink_memory")

    async def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the read connection (admin API, startup counts)."""
        if self._reader is None:
            raise BufferUnavailableError("closed", "the buffer is closed")
        rows = await self._reader.execute_fetchall(sql, parameters)
        return [tuple(row) for row in rows]
