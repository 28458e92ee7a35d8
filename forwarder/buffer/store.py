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
* **One writer task, group commit.** Every write (event appends, cursor acks,
  dead letters, registrations) is queued to a single task that drains the
  queue and commits everything it found in *one* transaction. Concurrent
  ingest requests therefore share a transaction (and, with
  ``synchronous=full``, one fsync), and ``seq`` can be assigned in memory
  because nothing else writes. An append's future resolves only after the
  commit, which is when ingest acknowledges.
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

Slightly past the house style's ~400 lines on purpose: what remains is the
one object whose in-memory state (head, cursors, counts, holdings) changes
only in the writer task after ``COMMIT``, and every method here reads or
changes that state. Everything that could leave has left: the SQL of a
commit (``writes``), opening and resuming (``opening``), cleanup, holdings,
the lock and the file watch.
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
from forwarder.buffer.cleanup import PURGE_INTERVAL_SECONDS, Cleanup
from forwarder.buffer.commits import (
    Append,
    AppendListener,
    AppendResult,
    AppendSummary,
    Group,
    Op,
    Register,
    Statements,
)
from forwarder.buffer.encryption import NO_KEYS, Keyring
from forwarder.buffer.holdings import Holdings
from forwarder.buffer.lock import BufferLock, FileWatch
from forwarder.buffer.opening import check_keys, connect_reader, connect_writer, read_state
from forwarder.buffer.writes import write_group
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

MAX_GROUP_OPS = 4096


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
        self._dedup_window = dedup_window_seconds
        self._clock = clock
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[Op | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._next_seq = 0
        self._cleanup = Cleanup(clock, Path(f"{path}-wal"))
        self._holdings = Holdings()
        self._cursors: dict[str, int] = {}
        self._event_count = 0
        self._listeners: list[AppendListener] = []
        self._changed = asyncio.Event()
        self._last_dedup_purge = 0.0
        self._instance = 0
        self._id_prefix = ""
        self._batch_reader = BatchReader(self.query, "", keyring)
        # One daemon per file (lock.py); the daemon takes it before anything else.
        self.lock = BufferLock(path)
        self.file_watch = FileWatch(path)
        self._checkpointer = Checkpointer(path)
        self._cleanup.settle = self._checkpointer.settle

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
            await check_keys(self._writer, self.path, self.keyring, self._cursors, forwarder_names)
        except sqlite3.Error as exc:
            raise unusable_from_sqlite_error(self.path, exc) from None
        self.file_watch.start()
        self._accepting = True
        self._writer_task = asyncio.create_task(self._write_loop(), name="buffer-writer")
        await self.register_forwarders(forwarder_names)

    def _migrate(self) -> int:
        return prepare(self.path)

    async def _load_state(self) -> None:
        assert self._writer is not None
        state = await read_state(self._writer)
        self._next_seq = state.head_seq
        self._cleanup.load(state.purged_upto, state.page_size)
        self._event_count = state.event_count
        self._instance = state.instance
        self._id_prefix = batches.id_prefix(self._instance)
        self._batch_reader = BatchReader(self.query, self._id_prefix, self.keyring)
        self._cursors = state.cursors
        await self._holdings.load(self._writer, self.path, self._floor(), self._next_seq)

    async def close(self) -> None:
        """Commit what is queued, stop the writer, checkpoint and close. Idempotent."""
        self._accepting = False
        if self._writer_task is not None:
            if not self._writer_task.done():
                self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._writer_task
            self._writer_task = None
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
        return self._writer_task

    # -- state read by delivery and metrics ------------------------------------

    @property
    def head_seq(self) -> int:
        """The highest committed seq."""
        return self._next_seq

    @property
    def event_count(self) -> int:
        """Events in the buffer (kept in memory: no table scan per scrape)."""
        return self._event_count

    def cursor(self, forwarder: str) -> int:
        """The committed cursor of ``forwarder``."""
        return self._cursors[forwarder]

    def cursors(self) -> dict[str, int]:
        """Every committed cursor, by forwarder."""
        return dict(self._cursors)

    def is_full(self, limit: int | None) -> bool:
        """Whether events held fill ``limit`` bytes (in memory: asked per request).

        When delivery history is what fills it, history gives way instead
        (see ``forwarder.buffer.holdings``) and this answers False.
        """
        if limit is None:
            return False
        full, make_room = self._holdings.refuses(limit)
        if make_room:
            self._wake_writer()
        return full

    def _wake_writer(self) -> None:
        """Have the writer commit soon even if nothing else is queued (to make room)."""
        if self._accepting:
            self._queue.put_nowait(Statements([], {}, None))

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
        self._listeners.append(listener)

    def remove_listener(self, listener: AppendListener) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        while self._next_seq <= seq:
            changed = self._changed
            await changed.wait()

    async def ping(self) -> None:
        """Run a trivial query on the read connection (health check)."""
        if self._reader is None:
            raise BufferUnavailableError("closed", "the buffer is closed")
        await self._reader.execute_fetchall("SELECT 1")

    # -- writes ----------------------------------------------------------------

    def _submit(self, op: Op) -> None:
        if not self._accepting:
            raise BufferUnavailableError("shutting_down", "the buffer is not accepting writes")
        if isinstance(op, Append) and (refusal := self.file_watch.refusal()) is not None:
            raise refusal
        self._queue.put_nowait(op)

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
        self._submit(Append(records, future, statements or []))
        return await future

    def ack(self, forwarder: str, seq: int) -> None:
        """Advance ``forwarder``'s cursor to ``seq`` in the next group commit.

        Not awaited: an ack lost in a crash only means the batch is delivered
        again (at-least-once), and the next ack covers it.
        """
        self._submit(Statements([], {forwarder: seq}, None))

    def submit(self, statements: list[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Queue statements for the next group commit without waiting for it.

        For records whose loss in a crash is acceptable (delivery history).
        """
        self._submit(Statements(statements, {}, None))

    async def execute(
        self,
        statements: list[tuple[str, Sequence[Sequence[Any]]]],
        acks: dict[str, int] | None = None,
    ) -> None:
        """Run ``executemany`` statements (and cursor acks) in the next group commit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(Statements(statements, acks or {}, future))
        await future

    async def register_forwarders(self, names: Iterable[str]) -> None:
        """Make ``names`` the set of forwarders; a new one starts at the head.

        A removed forwarder's cursor is deleted, so it no longer holds back
        the cleanup of delivered events.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(Register(list(names), future))
        await future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            # Idle with cleanup left (a drained backlog): keep going in small steps.
            idle_wait = 0.05 if self._cleanup.backlog(self._floor()) else PURGE_INTERVAL_SECONDS
            try:
                first = await asyncio.wait_for(self._queue.get(), idle_wait)
            except TimeoutError:
                self.file_watch.check()  # at least once a second when idle
                if self._cleanup.due(self._floor()):
                    await self._commit_group(Group([]))
                elif self._cleanup.truncate_pending and self._writer is not None:
                    await self._cleanup.truncate_wal(self._writer)
                elif self._writer is not None:
                    await self._cleanup.bound_wal(self._writer)
                continue
            if first is None:
                break
            ops: list[Op] = [first]
            while len(ops) < MAX_GROUP_OPS and not self._queue.empty():
                op = self._queue.get_nowait()
                if op is None:
                    stopping = True
                    break
                ops.append(op)
            await self._commit_group(Group(ops))

    def _floor(self) -> int:
        """The smallest committed cursor: every event at or below it is delivered."""
        return min(self._cursors.values(), default=self._next_seq)

    async def _commit_group(self, group: Group) -> None:
        conn = self._writer
        assert conn is not None
        self._holdings.begin()
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._clock()
                appended = await write_group(
                    conn, group, self._cursors, self._next_seq, now, self.keyring
                )
                await self._maintain(conn, group, now)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._fail_group(group, exc)
            return
        except BaseException as exc:
            self._fail_group(group, exc)
            raise
        self.file_watch.refuse_appends(group)  # before the appends are acknowledged
        self._apply_group(group, appended)
        self._checkpointer.after_commit(appended)
        await self._cleanup.vacuum(conn, group.cleanup)
        await self._cleanup.bound_wal(conn)

    async def _maintain(self, conn: aiosqlite.Connection, group: Group, now: float) -> None:
        """Delete delivered batches, expired dedup ids and history giving way; plan a vacuum."""
        cursors = {n: c for n, c in self._cursors.items() if n not in group.removed}
        cursors.update(group.registered)
        for name, seq in group.acks.items():
            if name in cursors:
                cursors[name] = max(cursors[name], seq)
        floor = min(cursors.values(), default=self._next_seq)
        group.cleanup = await self._cleanup.run(conn, floor, now)
        await self._holdings.make_room(conn)
        if now - self._last_dedup_purge >= 60.0:
            await conn.execute(
                "DELETE FROM client_ids WHERE received_at < ?", (now - self._dedup_window,)
            )
            self._last_dedup_purge = now

    def _fail_group(self, group: Group, exc: BaseException) -> None:
        full = isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()
        log.error("buffer_commit_failed", error=str(exc), ops=len(group.ops))
        group.fail(
            BufferUnavailableError(
                "buffer_full" if full else "storage_error",
                "the buffer's disk is full" if full else "the buffer could not commit",
                retry_after_seconds=5,
            )
        )

    def _apply_group(self, group: Group, appended_bytes: int) -> None:
        for name in group.removed:
            self._cursors.pop(name, None)
        self._cursors.update(group.registered)
        for name, seq in group.acks.items():
            if name in self._cursors:
                self._cursors[name] = max(self._cursors[name], seq)
        self._event_count -= self._cleanup.committed(group.cleanup)
        if self._holdings.commit():
            self._wake_writer()  # history is still giving way: keep going
        if group.parts:
            summary = AppendSummary.of(group.parts, group.received_at)
            self._event_count += summary.last_seq - self._next_seq
            self._next_seq = summary.last_seq
            self._holdings.appended(summary.last_seq, appended_bytes)
            if self._listeners:
                for listener in list(self._listeners):
                    listener(summary)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        self._holdings.delivered(self._floor())
        group.resolve()

    # -- reads -----------------------------------------------------------------

    async def read_after(self, forwarder: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events for ``forwarder`` with seq above ``after_seq``, in order.

        None above :attr:`head_seq`: the listeners have heard of every event
        returned (see :func:`~forwarder.buffer.batches.up_to_head`).
        """
        if after_seq >= self._next_seq:
            return []
        events = await self._batch_reader.read_after(forwarder, after_seq, limit)
        return batches.up_to_head(events, self._next_seq)

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
