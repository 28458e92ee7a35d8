"""The buffer's single writer task: the queue, group commit, and the state a commit changes.

**One writer task, group commit.** Every write (event appends, cursor acks,
dead letters, registrations) is queued to a single task that drains the
queue and commits everything it found in *one* transaction. Concurrent
ingest requests therefore share a transaction (and, with
``synchronous=full``, one fsync), and ``seq`` can be assigned in memory
because nothing else writes. An append's future resolves only after the
commit, which is when ingest acknowledges.

Split from the store so that :class:`~forwarder.buffer.store.EventBuffer`
holds the buffer's lifecycle, its connections and its reads, and
:class:`GroupWriter` holds the one task that writes. The in-memory state that
a commit changes (head, cursors, event count) lives here too, because only
this task changes it, and only after ``COMMIT``: the SQL of a group
(``forwarder.buffer.writes``) records what would change in the
:class:`~forwarder.buffer.commits.Group`, and :meth:`GroupWriter._apply_group`
applies it once the transaction is durable, so a rolled-back group leaves no
trace in memory. The store reads that state through this object. Between
commits, while idle, the task also runs the cleanup that needs the write
lock (``forwarder.buffer.cleanup``) and watches the file (``forwarder.buffer.lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable

import aiosqlite

from forwarder.buffer.checkpoints import Checkpointer
from forwarder.buffer.cleanup import PURGE_INTERVAL_SECONDS, Cleanup
from forwarder.buffer.commits import (
    Append,
    AppendListener,
    AppendSummary,
    Group,
    Op,
    Statements,
)
from forwarder.buffer.encryption import Keyring
from forwarder.buffer.holdings import Holdings
from forwarder.buffer.lock import FileWatch
from forwarder.buffer.writes import write_group
from forwarder.errors import BufferUnavailableError
from forwarder.logs import get_logger

log = get_logger("buffer")

MAX_GROUP_OPS = 4096


class GroupWriter:
    """Owns the write queue, the writer task and the committed in-memory state.

    Constructing it does no I/O; :meth:`start` runs the task on an open
    writer connection, :meth:`stop` commits what is queued and ends it.
    """

    def __init__(
        self,
        *,
        cleanup: Cleanup,
        holdings: Holdings,
        checkpointer: Checkpointer,
        file_watch: FileWatch,
        keyring: Keyring,
        clock: Callable[[], float],
        dedup_window_seconds: float,
    ) -> None:
        self._cleanup = cleanup
        self._holdings = holdings
        self._checkpointer = checkpointer
        self._file_watch = file_watch
        self._keyring = keyring
        self._clock = clock
        self._dedup_window = dedup_window_seconds
        self._conn: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[Op | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._next_seq = 0
        self._cursors: dict[str, int] = {}
        self._event_count = 0
        self.listeners: list[AppendListener] = []
        self._changed = asyncio.Event()
        self._last_dedup_purge = 0.0

    # -- lifecycle -------------------------------------------------------------

    def load(self, head_seq: int, cursors: dict[str, int], event_count: int) -> None:
        """Take the committed state found at open (before :meth:`start`)."""
        self._next_seq = head_seq
        self._cursors = cursors
        self._event_count = event_count

    def start(self, conn: aiosqlite.Connection) -> None:
        """Accept writes and start the writer task on ``conn``."""
        self._conn = conn
        self._accepting = True
        self._task = asyncio.create_task(self._write_loop(), name="buffer-writer")

    async def stop(self) -> None:
        """Refuse new writes, commit what is queued and end the task. Idempotent."""
        self._accepting = False
        if self._task is not None:
            if not self._task.done():
                self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task
            self._task = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The writer task, for the daemon to supervise."""
        return self._task

    # -- committed state -------------------------------------------------------

    @property
    def head_seq(self) -> int:
        """The highest committed seq."""
        return self._next_seq

    @property
    def event_count(self) -> int:
        """Events in the buffer, as of the last commit."""
        return self._event_count

    @property
    def cursors(self) -> dict[str, int]:
        """The committed cursors, by forwarder (changed only by the writer task)."""
        return self._cursors

    def floor(self) -> int:
        """The smallest committed cursor: every event at or below it is delivered."""
        return min(self._cursors.values(), default=self._next_seq)

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a seq above ``seq`` has been committed."""
        while self._next_seq <= seq:
            changed = self._changed
            await changed.wait()

    # -- the queue -------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Queue ``op`` for the next group commit, or refuse it (closing, file replaced)."""
        if not self._accepting:
            raise BufferUnavailableError("shutting_down", "the buffer is not accepting writes")
        if isinstance(op, Append) and (refusal := self._file_watch.refusal()) is not None:
            raise refusal
        self._queue.put_nowait(op)

    def wake(self) -> None:
        """Have the writer commit soon even if nothing else is queued (to make room)."""
        if self._accepting:
            self._queue.put_nowait(Statements([], {}, None))

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            # Idle with cleanup left (a drained backlog): keep going in small steps.
            idle_wait = 0.05 if self._cleanup.backlog(self.floor()) else PURGE_INTERVAL_SECONDS
            try:
                first = await asyncio.wait_for(self._queue.get(), idle_wait)
            except TimeoutError:
                self._file_watch.check()  # at least once a second when idle
                if self._cleanup.due(self.floor()):
                    await self._commit_group(Group([]))
                elif self._cleanup.truncate_pending and self._conn is not None:
                    await self._cleanup.truncate_wal(self._conn)
                elif self._conn is not None:
                    await self._cleanup.bound_wal(self._conn)
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

    # -- one group commit ------------------------------------------------------

    async def _commit_group(self, group: Group) -> None:
        conn = self._conn
        assert conn is not None
        self._holdings.begin()
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                now = self._clock()
                appended = await write_group(
                    conn, group, self._cursors, self._next_seq, now, self._keyring
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
        self._file_watch.refuse_appends(group)  # before the appends are acknowledged
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
            self.wake()  # history is still giving way: keep going
        if group.parts:
            summary = AppendSummary.of(group.parts, group.received_at)
            self._event_count += summary.last_seq - self._next_seq
            self._next_seq = summary.last_seq
            self._holdings.appended(summary.last_seq, appended_bytes)
            if self.listeners:
                for listener in list(self.listeners):
                    listener(summary)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        self._holdings.delivered(self.floor())
        group.resolve()
