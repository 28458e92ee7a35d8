"""Giving space back: deleting delivered batches, freeing pages, cutting the WAL.

Runs on the buffer's writer connection: the purge inside a group commit (so
it is atomic with the cursor acks that allowed it), the vacuum steps and the
checkpoint right after one. Decisions about the future are taken in the
transaction; what is known to be deleted is recorded only once it committed.

* **Purge** deletes the batches wholly at or below the smallest cursor, at
  most ``PURGE_CHUNK_ROWS`` events at a time, once a second or as soon as a
  chunk is ready. A batch that a cursor has only partly passed stays whole;
  purging waits until the floor passes its last event.
* **Vacuum.** Deleted pages stay in the file as free pages. Every 10 s,
  when there are at least ``VACUUM_MIN_FREE_BYTES`` of them, they are handed
  back to the file system in steps of ``VACUUM_STEP_BYTES``, 0.2 s apart, so
  one transaction never holds the write lock for long. The steps are sized
  in bytes because page sizes differ between files.
* **WAL truncation.** The last step checkpoints with TRUNCATE so the file
  and the WAL really shrink. That checkpoint cannot finish while the
  delivery process reads an older snapshot, and once writes stop nothing
  else would cut the WAL. So a blocked checkpoint is retried by the idle
  writer each second, each time waiting at most ``TRUNCATE_WAIT_MS`` so that
  no commit is held up for long.
* **WAL bound under load.** SQLite's automatic checkpoint (every 16 MiB of
  WAL with 16 KiB pages) only copies frames back; the WAL starts over from
  its beginning only when a writer finds it wholly copied and no reader on
  it. The delivery process reads all the time under steady load, so that
  moment can fail to come and the WAL grows without end (hundreds of MB in
  a minute). So after a commit, at most every ``WAL_CHECK_SECONDS``, the
  writer stats the WAL, and past ``WAL_MAX_BYTES`` (above what the automatic
  checkpoint and a vacuum step leave, so it only acts when starved) it runs
  the same TRUNCATE checkpoint: it waits at most ``TRUNCATE_WAIT_MS`` for the
  reads in flight, since new readers then read the database file, not the
  WAL. If a reader still holds an old snapshot, it tries again after
  ``WAL_RETRY_SECONDS``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from forwarder.logs import get_logger

log = get_logger("buffer")

PURGE_CHUNK_ROWS = 50_000
PURGE_INTERVAL_SECONDS = 1.0
VACUUM_INTERVAL_SECONDS = 10.0
VACUUM_STEP_BYTES = 32 * 1024 * 1024
VACUUM_MIN_FREE_BYTES = 4 * 1024 * 1024
VACUUM_STEP_PAUSE = 0.2
BUSY_TIMEOUT_MS = 5000
TRUNCATE_WAIT_MS = 100
WAL_MAX_BYTES = 48 * 1024 * 1024
WAL_CHECK_SECONDS = 0.1
WAL_RETRY_SECONDS = 1.0


@dataclass
class Planned:
    """What one transaction's cleanup did, to be recorded once it commits."""

    purged_upto: int | None = None
    purged_events: int = 0
    purge_blocked_below: int = 0
    vacuum_pages: int = 0


class Cleanup:
    """The cleanup state of one buffer. Constructing it does no I/O."""

    def __init__(self, clock: Callable[[], float], wal_path: Path) -> None:
        self._clock = clock
        self._wal_path = wal_path
        self._next_wal_check = 0.0
        self._wal_over_bound = False  # a bound checkpoint found a reader in its way
        self.purged_upto = 0  # every batch ending at or below it is deleted
        self._blocked_below = 0  # the first batch left ends here: wait for the floor
        self._page_size = 4096
        self._last_purge = 0.0
        self._last_vacuum = 0.0
        self._vacuum_wanted = True
        self._free_pages_left = False
        self._truncate_pending = False
        # Awaited before a TRUNCATE checkpoint: the background checkpoint
        # (forwarder.buffer.checkpoints) finishes first, or the cut would find
        # the checkpoint lock taken and give up until the next retry.
        self.settle: Callable[[], Awaitable[None]] | None = None

    def load(self, purged_upto: int, page_size: int) -> None:
        """Start from what the file holds."""
        self.purged_upto = purged_upto
        self._page_size = page_size

    # -- decisions ---------------------------------------------------------------

    def purge_possible(self, floor: int) -> bool:
        """Whether some batch lies wholly at or below the cursors' floor."""
        return floor > self.purged_upto and floor >= self._blocked_below

    def backlog(self, floor: int) -> bool:
        """Delivered batches still to delete, or free pages still to hand back."""
        return self.purge_possible(floor) or self._free_pages_left

    def due(self, floor: int) -> bool:
        """Whether an idle writer should commit (empty) for the cleanup's sake."""
        return self.purge_possible(floor) or (
            self._clock() - self._last_vacuum >= VACUUM_INTERVAL_SECONDS and self._vacuum_wanted
        )

    @property
    def truncate_pending(self) -> bool:
        """Whether a checkpoint that cuts the WAL is still owed."""
        return self._truncate_pending

    def wal_too_big(self) -> bool:
        """Whether the WAL has passed ``WAL_MAX_BYTES`` (a stat, at most every 0.1 s).

        A clock set back by more than a retry interval does not postpone the check.
        """
        now = self._clock()
        if now < self._next_wal_check and self._next_wal_check - now <= WAL_RETRY_SECONDS:
            return False
        self._next_wal_check = now + WAL_CHECK_SECONDS
        try:
            return os.stat(self._wal_path).st_size > WAL_MAX_BYTES
        except OSError:
            return False

    # -- in the transaction --------------------------------------------------------

    async def run(self, conn: aiosqlite.Connection, floor: int, now: float) -> Planned:
        """Purge what the floor allows and decide the next vacuum step."""
        planned = Planned()
        due = now - self._last_purge >= PURGE_INTERVAL_SECONDS
        if self.purge_possible(floor) and (due or floor - self.purged_upto >= PURGE_CHUNK_ROWS):
            await self._purge(conn, planned, min(floor, self.purged_upto + PURGE_CHUNK_ROWS))
            self._last_purge = now
        if now - self._last_vacuum >= VACUUM_INTERVAL_SECONDS:
            self._last_vacuum = now
            rows = await conn.execute_fetchall("PRAGMA freelist_count")
            self._plan_vacuum(planned, int(next(iter(rows))[0]), now)
        return planned

    async def _purge(self, conn: aiosqlite.Connection, planned: Planned, upto: int) -> None:
        """Delete the batches wholly in (purged_upto, upto]; note where the next one ends."""
        in_range = "first_seq > ? AND first_seq <= ?"
        bounds = (self.purged_upto, upto)
        rows = await conn.execute_fetchall(
            f"SELECT sum(last_seq - first_seq + 1) FROM batches WHERE {in_range} AND last_seq <= ?",
            (*bounds, upto),
        )
        planned.purged_events = int(next(iter(rows))[0] or 0)
        straddling = await conn.execute_fetchall(
            f"SELECT first_seq, last_seq FROM batches WHERE {in_range} AND last_seq > ?",
            (*bounds, upto),
        )
        await conn.execute(
            f"DELETE FROM batches WHERE {in_range} AND last_seq <= ?", (*bounds, upto)
        )
        planned.purged_upto, planned.purge_blocked_below = upto, 0
        for first_seq, last_seq in straddling:
            # A batch partly delivered stays whole: purging resumes once the floor passes it.
            planned.purged_upto, planned.purge_blocked_below = first_seq - 1, last_seq

    def _plan_vacuum(self, planned: Planned, free_pages: int, now: float) -> None:
        step_pages = VACUUM_STEP_BYTES // self._page_size
        mid_vacuum = self._free_pages_left
        # Mid-vacuum, the last few pages are taken too: only that final step
        # checkpoints and cuts the WAL the earlier steps have grown.
        self._vacuum_wanted = free_pages * self._page_size >= VACUUM_MIN_FREE_BYTES or (
            mid_vacuum and free_pages > 0
        )
        self._free_pages_left = free_pages > step_pages
        if mid_vacuum and not self._vacuum_wanted:
            self._truncate_pending = True  # nothing left to free: just the checkpoint
        if self._vacuum_wanted:
            planned.vacuum_pages = min(free_pages, step_pages)
            if self._free_pages_left:
                # While pages are left the next step comes soon, not in 10 s.
                self._last_vacuum = now - VACUUM_INTERVAL_SECONDS + VACUUM_STEP_PAUSE

    # -- after the commit --------------------------------------------------------------

    def committed(self, planned: Planned) -> int:
        """Record a committed purge; return how many events it deleted."""
        if planned.purged_upto is None:
            return 0
        self.purged_upto = planned.purged_upto
        self._blocked_below = planned.purge_blocked_below
        if planned.purged_events:
            self._vacuum_wanted = True  # deleted rows leave free pages to hand back
        return planned.purged_events

    async def vacuum(self, conn: aiosqlite.Connection, planned: Planned) -> None:
        """The planned vacuum step, in its own transaction (and the checkpoint after the last).

        Through executescript: sqlite3's execute() steps a statement once, and
        each step of incremental_vacuum frees a single page.
        """
        if not planned.vacuum_pages:
            return
        try:
            await conn.executescript(f"PRAGMA incremental_vacuum({planned.vacuum_pages});")
        except sqlite3.Error as exc:
            log.warning("buffer_vacuum_failed", error=str(exc))
        if not self._free_pages_left:
            await self.truncate_wal(conn)

    async def truncate_wal(self, conn: aiosqlite.Connection) -> None:
        """Checkpoint and cut the WAL to zero; if a reader blocks it, try again later."""
        busy = await self._checkpoint_truncate(conn)
        if busy and not self._truncate_pending:
            log.info("buffer_checkpoint_deferred", reason="a reader holds an older snapshot")
        self._truncate_pending = busy

    async def bound_wal(self, conn: aiosqlite.Connection) -> None:
        """Cut a WAL that has passed ``WAL_MAX_BYTES``; if a reader blocks it, retry later."""
        if not self.wal_too_big():
            return
        if await self._checkpoint_truncate(conn):
            if not self._wal_over_bound:
                log.info(
                    "buffer_wal_over_bound",
                    bound_bytes=WAL_MAX_BYTES,
                    reason="a reader holds an older snapshot",
                )
            self._wal_over_bound = True
            self._next_wal_check = self._clock() + WAL_RETRY_SECONDS
            return
        log.debug("buffer_wal_cut", bound_bytes=WAL_MAX_BYTES)
        self._wal_over_bound = False
        self._truncate_pending = False  # whoever owed a cut WAL, it is cut

    async def _checkpoint_truncate(self, conn: aiosqlite.Connection) -> bool:
        """A TRUNCATE checkpoint; whether a reader (or an error) kept it from finishing."""
        if self.settle is not None:
            await self.settle()
        try:
            # Briefly: while it waits for readers, no group commit can start.
            await conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}")
            rows = await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            return bool(next(iter(rows))[0])
        except sqlite3.Error as exc:
            log.warning("buffer_checkpoint_failed", error=str(exc))
            return True
        finally:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
