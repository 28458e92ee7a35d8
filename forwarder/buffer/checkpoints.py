"""WAL checkpoints on a connection of their own, off the commit path.

SQLite's automatic checkpoint runs inside the ``COMMIT`` call of the
connection whose commit pushed the WAL past ``wal_autocheckpoint`` pages:
the writer, here. It copies the WAL back into the database file, 60–200 ms
after a large group commit, and every ingest request of that group waits
for its ``202`` until it is done, although the group was already durable
and visible. So the writer turns the automatic checkpoint off and
:class:`Checkpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a
connection (and so a thread) of its own once the WAL has grown by
``CHECKPOINT_BYTES``: the copy overlaps the next group commits instead of
delaying their acknowledgements. A passive checkpoint never blocks the
writer or a reader; it copies what no reader still needs, and the next one
takes the rest. One runs at a time. The WAL stays bounded as before by
:meth:`~forwarder.buffer.cleanup.Cleanup.bound_wal`, which cuts it with a
TRUNCATE checkpoint past ``WAL_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import aiosqlite

from forwarder.logs import get_logger

log = get_logger("buffer")

# The WAL growth that starts a checkpoint: half of SQLite's default
# automatic point (1,000 pages of 16 KiB), so each copy stays short.
CHECKPOINT_BYTES = 8 * 1024 * 1024


class Checkpointer:
    """Runs passive checkpoints of one buffer file in the background."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wal_path = Path(f"{path}-wal")
        self._conn: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._written = 0  # bytes appended since the last checkpoint started
        self._checkpointed_at = 0  # WAL file size when the last checkpoint started

    async def open(self) -> None:
        """Open the checkpoint connection (the file exists and is in WAL mode)."""
        self._conn = await aiosqlite.connect(self._path, isolation_level=None)
        await self._conn.execute("PRAGMA cache_size = -256")

    def after_commit(self, appended_bytes: int) -> None:
        """Start a checkpoint if the WAL has grown enough and none is running.

        Growth is counted two ways, because neither alone sees all of it: the
        event bytes committed since the last checkpoint (after a checkpoint
        SQLite writes the WAL from its start again, so the file's size stops
        telling), and the file's growth (deletes and history add pages too).
        """
        self._written += appended_bytes
        if self._conn is None or (self._task is not None and not self._task.done()):
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            size = 0
        if size < self._checkpointed_at:  # the WAL was cut
            self._checkpointed_at = size
        if self._written < CHECKPOINT_BYTES and size - self._checkpointed_at < CHECKPOINT_BYTES:
            return
        self._written = 0
        self._checkpointed_at = size
        self._task = asyncio.create_task(self._checkpoint(), name="buffer-checkpoint")

    async def settle(self) -> None:
        """Return once no checkpoint of ours is running."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def _checkpoint(self) -> None:
        assert self._conn is not None
        try:
            await self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            # The writer's bound on the WAL still holds; the next commit tries again.
            log.warning("buffer_checkpoint_failed", error=str(exc))

    async def close(self) -> None:
        """Wait for a running checkpoint and close the connection. Idempotent."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
